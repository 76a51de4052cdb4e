#!/usr/bin/env python3
"""Generate the small ONNX models used by the inference plane's tests, benches and demo.

Nothing is downloaded: the weights are drawn from a seeded numpy generator, the graphs are built
with the `onnx` helper API, and the expected outputs are computed independently with numpy (not
with onnxruntime), so the Rust tests compare ONNX Runtime's answer with a second implementation.

Written into --out:
  mlp.onnx                        float32 x[N,16] -> MatMul/Add/Relu/MatMul/Add -> float32 y[N,4]
  mlp.reference.json              fixed inputs and numpy outputs at batch 1 and batch 8
  text_classifier.onnx            int64 tokens[N,16] -> Gather(embedding) -> ReduceMean(axis 1)
                                  -> MatMul/Add -> float32 logits[N,4] (tutor-turn intent)
  text_classifier.reference.json  same, plus the vocabulary and intent labels
The batch dimension N is symbolic ("batch") in both models, so requests can be concatenated.
"""

import argparse
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # readable by every ONNX Runtime >= 1.14
SEQ_LEN = 16
INTENTS = ["question", "explanation", "greeting", "feedback"]
# token 0 pads, token 1 stands for any word not in the vocabulary
INTENT_WORDS = {
    "question": ["what", "why", "how", "when", "where", "which", "who", "?", "does", "can", "is"],
    "explanation": ["because", "means", "so", "therefore", "example", "step", "first", "then",
                    "equals", "formula", "rule"],
    "greeting": ["hello", "hi", "hey", "good", "morning", "afternoon", "welcome", "bye", "thanks",
                 "see", "later"],
    "feedback": ["great", "correct", "wrong", "well", "done", "nice", "try", "again", "almost",
                 "right", "excellent"],
}


def vocabulary():
    words = ["<pad>", "<unk>"]
    for intent in INTENTS:
        words.extend(INTENT_WORDS[intent])
    return words


def save(model, path):
    onnx.checker.check_model(model)
    onnx.save(model, path)


def make_mlp(rng):
    w1 = rng.normal(0.0, 0.5, size=(16, 32)).astype(np.float32)
    b1 = rng.normal(0.0, 0.1, size=(32,)).astype(np.float32)
    w2 = rng.normal(0.0, 0.5, size=(32, 4)).astype(np.float32)
    b2 = rng.normal(0.0, 0.1, size=(4,)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
        helper.make_node("Add", ["h3", "b2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "opengrid_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(a, n) for a, n in
                     [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2")]],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="opengrid-gen-models")
    model.ir_version = IR_VERSION

    def reference(x):
        h = np.maximum(x.astype(np.float64) @ w1 + b1, 0.0)
        return (h @ w2 + b2).astype(np.float32)

    return model, reference


def make_text_classifier(rng):
    words = vocabulary()
    vocab = len(words)
    dim = 16
    # Dimensions 0..3 carry the intent of a keyword; the rest is small noise, so the mean over a
    # turn's tokens points at the dominant intent and the model gives recognisable answers.
    emb = rng.normal(0.0, 0.05, size=(vocab, dim)).astype(np.float32)
    emb[0, :] = 0.0  # padding contributes nothing
    for intent_idx, intent in enumerate(INTENTS):
        for word in INTENT_WORDS[intent]:
            emb[words.index(word), intent_idx] += 1.0
    w = rng.normal(0.0, 0.05, size=(dim, len(INTENTS))).astype(np.float32)
    w[np.arange(len(INTENTS)), np.arange(len(INTENTS))] += 4.0
    b = np.zeros((len(INTENTS),), dtype=np.float32)
    nodes = [
        helper.make_node("Gather", ["embedding", "tokens"], ["emb"], axis=0),
        helper.make_node("ReduceMean", ["emb"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["l0"]),
        helper.make_node("Add", ["l0", "b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "opengrid_text_classifier",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", SEQ_LEN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(INTENTS)])],
        initializer=[numpy_helper.from_array(emb, "embedding"), numpy_helper.from_array(w, "w"),
                     numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="opengrid-gen-models")
    model.ir_version = IR_VERSION

    def reference(tokens):
        pooled = emb.astype(np.float64)[tokens].mean(axis=1)
        return (pooled @ w + b).astype(np.float32)

    return model, reference, words


def tokenize(text, words):
    ids = []
    for raw in text.lower().replace("?", " ? ").split():
        ids.append(words.index(raw) if raw in words else 1)
    ids = ids[:SEQ_LEN]
    return ids + [0] * (SEQ_LEN - len(ids))


def case(batch, x, y):
    return {
        "batch": batch,
        "input_shape": list(x.shape),
        "input": x.reshape(-1).tolist(),
        "output_shape": list(y.shape),
        "output": [float(v) for v in y.reshape(-1)],
    }


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory to write models into")
    parser.add_argument("--seed", type=int, default=20240607)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)

    mlp, mlp_ref = make_mlp(rng)
    save(mlp, os.path.join(args.out, "mlp.onnx"))
    cases = []
    for batch in (1, 8):
        x = rng.normal(0.0, 1.0, size=(batch, 16)).astype(np.float32)
        cases.append(case(batch, x, mlp_ref(x)))
    write_json(os.path.join(args.out, "mlp.reference.json"), {
        "model": "mlp.onnx",
        "input_name": "x",
        "input_dtype": "float32",
        "output_name": "y",
        "output_dtype": "float32",
        "tolerance": 1e-4,
        "cases": cases,
    })

    clf, clf_ref, words = make_text_classifier(rng)
    save(clf, os.path.join(args.out, "text_classifier.onnx"))
    sentences = [
        "why does the formula work ?",
        "because the rule means each step equals the first",
        "hello good morning and welcome",
        "great work that is correct well done",
        "how can i find where it is ?",
        "so then the example means therefore",
        "hi thanks see you later bye",
        "almost right try again",
    ]
    cases = []
    for batch in (1, 8):
        tokens = np.array([tokenize(s, words) for s in sentences[:batch]], dtype=np.int64)
        cases.append(case(batch, tokens, clf_ref(tokens)))
    write_json(os.path.join(args.out, "text_classifier.reference.json"), {
        "model": "text_classifier.onnx",
        "input_name": "tokens",
        "input_dtype": "int64",
        "output_name": "logits",
        "output_dtype": "float32",
        "tolerance": 1e-4,
        "seq_len": SEQ_LEN,
        "labels": INTENTS,
        "vocabulary": words,
        "tokenizer": "lowercase, '?' split off as its own token, split on whitespace, unknown -> 1, "
                     "truncate/pad with 0 to seq_len",
        "sentences": sentences,
        "expected_labels": [INTENTS[int(i)] for i in np.argmax(clf_ref(np.array(
            [tokenize(s, words) for s in sentences], dtype=np.int64)), axis=1)],
        "cases": cases,
    })
    print(f"wrote mlp.onnx, text_classifier.onnx and references to {args.out}")


if __name__ == "__main__":
    main()
