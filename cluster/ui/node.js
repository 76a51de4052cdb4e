// One node's view: its membership and lease (/health) and the sessions it holds (/sessions).
import {el, fillTable, getJson, bytes, short, badge, updatedClock, showError} from './common.js';

const POLL_MS = 1000;
const stamp = updatedClock();

function tile(label, value, kind) {
  return el('div', {class: `tile ${kind || ''}`}, el('div', {class: 'value'}, value), el('div', {class: 'label'}, label));
}

function policy(p) {
  if (!p) return '';
  if (p.mode === 'Synchronous') return 'zero loss';
  const per = p.mode && p.mode.Periodic;
  if (per && per.max_interval) return `≤ ${per.max_interval.secs}s loss`;
  return JSON.stringify(p.mode);
}

async function refresh() {
  try {
    const [h, list] = await Promise.all([getJson('/health'), getJson('/sessions')]);
    document.getElementById('node-name').textContent = `${h.name} (${h.jurisdiction})`;
    document.getElementById('node-id').textContent = short(h.node, 14);
    document.getElementById('node-id').title = h.node;
    const m = document.getElementById('membership');
    m.textContent = h.serving ? 'serving' : h.membership;
    m.className = `badge ${h.serving ? 'alive' : 'dead'}`;
    document.body.dataset.membership = h.membership;
    const out = document.getElementById('outside');
    out.hidden = !h.outside_reason;
    out.textContent = h.outside_reason ? `Not a member: ${h.outside_reason}` : '';
    document.getElementById('tiles').replaceChildren(
      tile('sessions', `${h.sessions}/${h.capacity}`),
      tile('lease left', `${h.lease_left_ms} ms`, h.serving ? 'good' : 'bad'),
      tile('rtt to RC', `${h.rtt_us} µs`),
      tile('accelerator', h.accelerator),
      tile('draining', h.draining ? 'yes' : 'no', h.draining ? 'bad' : ''),
      tile('receipts signed / acked', h.receipts ? `${h.receipts.signed} / ${h.receipts.acked}` : ''),
    );
    document.getElementById('n-sessions').textContent = list.total;
    fillTable(document.getElementById('sessions'), list.sessions.map(s => {
      const u = s.usage || {};
      return el('tr', {'data-session': s.session_id, 'data-status': s.status},
        el('td', {class: 'mono'}, s.session_id), el('td', {}, s.handler), el('td', {class: 'num'}, s.epoch),
        el('td', {}, badge(s.status)), el('td', {class: 'num'}, s.last_seq), el('td', {class: 'num'}, u.inputs),
        el('td', {class: 'num'}, u.checkpoints), el('td', {class: 'num'}, u.checkpoints ? bytes(Math.round(u.checkpoint_bytes / u.checkpoints)) : '—'),
        el('td', {}, policy(s.policy)), el('td', {class: 'mono'}, (s.replicas || []).join(', ') || '—'));
    }));
    document.getElementById('sessions-empty').hidden = list.total > 0;
    showError(null);
    stamp();
    document.body.dataset.ready = '1';
  } catch (e) {
    showError(e);
  }
}

refresh();
setInterval(refresh, POLL_MS);
