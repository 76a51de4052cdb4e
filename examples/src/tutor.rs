//! `tutor`: an interactive arithmetic tutor whose state grows with every turn.
//!
//! The tutor asks a question, checks the student's answer, adapts the difficulty (a streak of
//! right answers raises the level, a wrong one lowers it), keeps the whole transcript, and
//! answers a few commands: `hint`, `skip`, `score`, `level <n>`.
//!
//! Questions are derived deterministically from the session id and the turn number, so a session
//! restored from a checkpoint (after a restart, handover or failover) continues exactly where it
//! was — a requirement of every handler (see [`SessionHandler`]).
//!
//! Fault injection for demos and chaos runs: the input `!crash` makes the handler panic, so the
//! supervisor restarts the session from its last checkpoint; `!slow <ms>` busy-waits.

use opengrid_actors::{HandlerError, SessionContext, SessionHandler};
use opengrid_session::SessionId;

use crate::intent::IntentClassifier;
use serde::{Deserialize, Serialize};

/// One student message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TutorInput {
    /// What the student typed.
    pub text: String,
}

impl TutorInput {
    /// Convenience constructor.
    pub fn new(text: impl Into<String>) -> Self {
        TutorInput { text: text.into() }
    }
}

/// The tutor's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TutorReply {
    /// What the tutor says.
    pub say: String,
    /// The question now open.
    pub question: String,
    /// Turn number (inputs answered so far).
    pub turn: u64,
    /// Right answers so far.
    pub correct: u64,
    /// Current difficulty level (1..=5).
    pub level: u8,
    /// Intent of the student's message, when the node runs the intent classifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
}

/// One exchange in the transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// Student text.
    pub student: String,
    /// Tutor text.
    pub tutor: String,
}

/// The tutor's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TutorState {
    /// Student's level, 1..=5.
    pub level: u8,
    /// Right answers in a row.
    pub streak: u32,
    /// Right answers.
    pub correct: u64,
    /// Wrong answers.
    pub wrong: u64,
    /// Open question operands and operator.
    pub question: (i64, char, i64),
    /// Every exchange so far (the state grows each turn).
    pub transcript: Vec<Turn>,
    /// Salt derived from the session id.
    pub salt: u64,
    /// Student intents seen so far (question, explanation, greeting, feedback).
    pub intents: std::collections::BTreeMap<String, u64>,
}

impl TutorState {
    fn answer(&self) -> i64 {
        let (a, op, b) = self.question;
        match op {
            '+' => a + b,
            '-' => a - b,
            _ => a * b,
        }
    }

    fn question_text(&self) -> String {
        let (a, op, b) = self.question;
        format!("What is {a} {op} {b}?")
    }

    fn next_question(&mut self) {
        let n = self.transcript.len() as u64;
        let h = splitmix(self.salt ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let max = [9, 20, 50, 100, 1000][(self.level.clamp(1, 5) - 1) as usize];
        let a = (h % max) as i64 + 1;
        let b = ((h >> 20) % max) as i64 + 1;
        let op = match (h >> 40) % if self.level >= 3 { 3 } else { 2 } {
            0 => '+',
            1 => '-',
            _ => '*',
        };
        self.question = (a, op, b);
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The tutor handler.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tutor;

impl SessionHandler for Tutor {
    type State = TutorState;
    type Input = TutorInput;
    type Output = TutorReply;

    fn id(&self) -> &str {
        "tutor"
    }

    fn init(&self, session: &SessionId) -> TutorState {
        let salt = u64::from_le_bytes(fnv_prefix(session.as_str().as_bytes()));
        let mut s = TutorState {
            level: 1,
            streak: 0,
            correct: 0,
            wrong: 0,
            question: (1, '+', 1),
            transcript: Vec::new(),
            salt,
            intents: Default::default(),
        };
        s.next_question();
        s
    }

    async fn handle(
        &self,
        st: &mut TutorState,
        input: TutorInput,
        ctx: &SessionContext,
    ) -> Result<TutorReply, HandlerError> {
        let text = input.text.trim();
        if text.len() > 4096 {
            return Err(HandlerError::new(
                "too_long",
                "a message is at most 4096 bytes",
            ));
        }
        let intent = match ctx.service::<IntentClassifier>() {
            Some(c) if ctx.has_inference() && !text.starts_with('!') => {
                Some(c.classify(ctx, text).await?)
            }
            _ => None,
        };
        if let Some(i) = &intent {
            *st.intents.entry(i.clone()).or_default() += 1;
        }
        let mut reply = self.respond(st, text, intent.as_deref())?;
        reply.intent = intent;
        Ok(reply)
    }
}

impl Tutor {
    fn respond(
        &self,
        st: &mut TutorState,
        text: &str,
        intent: Option<&str>,
    ) -> Result<TutorReply, HandlerError> {
        if text == "!crash" {
            panic!("tutor asked to crash (fault injection)");
        }
        if let Some(ms) = text.strip_prefix("!slow ") {
            let ms: u64 = ms
                .trim()
                .parse()
                .map_err(|_| HandlerError::new("bad_input", "!slow takes milliseconds"))?;
            let end = std::time::Instant::now() + std::time::Duration::from_millis(ms.min(10_000));
            while std::time::Instant::now() < end {
                std::hint::spin_loop();
            }
        }
        let say = match text {
            "hint" => {
                let (a, op, b) = st.question;
                match op {
                    '*' => format!("{a} * {b} is {a} added {b} times."),
                    '-' => format!("Start at {a} and count down {b}."),
                    _ => format!("Start at {a} and count up {b}."),
                }
            }
            "score" => format!(
                "{} right, {} wrong, level {}.",
                st.correct, st.wrong, st.level
            ),
            "skip" => {
                let ans = st.answer();
                st.next_question_after_turn(text, format!("The answer was {ans}."));
                return Ok(st.reply(format!("The answer was {ans}. Next one.")));
            }
            t if t.starts_with("level ") => match t[6..].trim().parse::<u8>() {
                Ok(l) if (1..=5).contains(&l) => {
                    st.level = l;
                    let say = format!("Level set to {l}.");
                    st.next_question_after_turn(text, say.clone());
                    return Ok(st.reply(say));
                }
                _ => {
                    return Err(HandlerError::new(
                        "bad_input",
                        "level takes a number from 1 to 5",
                    ))
                }
            },
            t if t.starts_with('!') => "OK.".to_string(),
            t => match t.parse::<i64>() {
                Ok(n) if n == st.answer() => {
                    st.correct += 1;
                    st.streak += 1;
                    let mut say = "Right!".to_string();
                    if st.streak >= 3 && st.level < 5 {
                        st.level += 1;
                        st.streak = 0;
                        say.push_str(&format!(" Moving up to level {}.", st.level));
                    }
                    st.next_question_after_turn(text, say.clone());
                    return Ok(st.reply(say));
                }
                Ok(n) => {
                    st.wrong += 1;
                    st.streak = 0;
                    let ans = st.answer();
                    let mut say = format!(
                        "Not quite: {n} is {} by {}.",
                        if n < ans { "too low" } else { "too high" },
                        (n - ans).abs()
                    );
                    if st.level > 1 {
                        st.level -= 1;
                        say.push_str(&format!(" Back to level {}.", st.level));
                    }
                    say
                }
                Err(_) => match intent {
                    Some("question") => {
                        format!(
                            "Good question. Let's work it through: {}",
                            st.question_text()
                        )
                    }
                    Some("greeting") => "Hello! Ready when you are.".to_string(),
                    Some("feedback") => "Thanks! On to the next one.".to_string(),
                    Some("explanation") => "Nice reasoning. Now put it into a number.".to_string(),
                    _ => "Answer with a number, or say hint, skip, score or level <n>.".to_string(),
                },
            },
        };
        st.transcript.push(Turn {
            student: text.to_string(),
            tutor: say.clone(),
        });
        Ok(st.reply(say))
    }
}

impl TutorState {
    fn next_question_after_turn(&mut self, student: &str, tutor: String) {
        self.transcript.push(Turn {
            student: student.to_string(),
            tutor,
        });
        self.next_question();
    }

    fn reply(&self, say: String) -> TutorReply {
        TutorReply {
            say,
            question: self.question_text(),
            turn: self.transcript.len() as u64,
            correct: self.correct,
            level: self.level,
            intent: None,
        }
    }

    /// The answer to the open question (used by demos and tests to play a good student).
    pub fn expected_answer(&self) -> i64 {
        self.answer()
    }
}

fn fnv_prefix(b: &[u8]) -> [u8; 8] {
    // FNV-1a is enough to salt question generation; no cryptographic property is needed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= *x as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h.to_le_bytes()
}

/// Solves a question text produced by the tutor (`"What is a op b?"`), for scripted students.
pub fn solve(question: &str) -> Option<i64> {
    let q = question.strip_prefix("What is ")?.strip_suffix('?')?;
    let mut it = q.split(' ');
    let a: i64 = it.next()?.parse().ok()?;
    let op = it.next()?;
    let b: i64 = it.next()?.parse().ok()?;
    Some(match op {
        "+" => a + b,
        "-" => a - b,
        "*" => a * b,
        _ => return None,
    })
}
