// The colony dashboard: /status (members, directory, canopy) polled and refreshed on every
// live event from /ui/events (server-sent events), /ui/ledger while the ledger tab is open.
import {el, fillTable, getJson, withToken, age, bytes, micros, short, phi, badge, updatedClock, showError} from './common.js';

const MAX_EVENTS = 300;
const POLL_MS = 2000;
const LEDGER_MS = 2000;

let status = null;
let names = new Map(); // node id -> name
let events = [];       // newest first
const stamp = updatedClock();

// ---- tabs -----------------------------------------------------------------------------------

function currentTab() {
  const t = (location.hash || '#colony').slice(1);
  return document.getElementById(`tab-${t}`) ? t : 'colony';
}

function showTab() {
  const t = currentTab();
  for (const s of document.querySelectorAll('section.tab')) s.hidden = s.id !== `tab-${t}`;
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.tab === t);
  document.body.dataset.tab = t;
  if (t === 'ledger') refreshLedger();
}
window.addEventListener('hashchange', showTab);

// ---- colony and sessions --------------------------------------------------------------------

function tile(label, value, kind) {
  return el('div', {class: `tile ${kind || ''}`}, el('div', {class: 'value'}, value), el('div', {class: 'label'}, label));
}

function renderColony(st) {
  document.getElementById('colony-name').textContent = st.colony;
  document.getElementById('rc-id').textContent = `rc ${short(st.rc, 14)}`;
  document.getElementById('rc-id').title = st.rc;
  const members = st.members || [];
  const alive = members.filter(m => m.state === 'alive').length;
  const dead = members.filter(m => m.state === 'dead').length;
  const sessions = st.sessions || [];
  const orphaned = sessions.filter(s => s.state === 'orphaned').length;
  const waiting = sessions.filter(s => s.waiting).length;
  document.getElementById('summary').replaceChildren(
    tile('nodes alive', `${alive}/${members.length}`, dead ? 'bad' : 'good'),
    tile('sessions', sessions.length),
    tile('orphaned', orphaned, orphaned ? 'bad' : ''),
    tile('waiting', waiting, waiting ? 'bad' : ''),
    tile('capacity used', `${members.reduce((a, m) => a + (m.state === 'alive' ? m.sessions : 0), 0)}/${members.reduce((a, m) => a + (m.state === 'alive' ? m.capacity : 0), 0)}`),
  );
  const byJur = new Map();
  for (const m of members) {
    if (!byJur.has(m.jurisdiction)) byJur.set(m.jurisdiction, []);
    byJur.get(m.jurisdiction).push(m);
  }
  const groups = [...byJur.keys()].sort().map(j => {
    const cards = byJur.get(j).sort((a, b) => a.name.localeCompare(b.name)).map(m => {
      const load = m.capacity ? Math.min(100, Math.round(100 * m.sessions / m.capacity)) : 0;
      const bar = el('div', {class: 'bar'}, el('div', {class: 'fill'}));
      bar.firstChild.style.width = `${load}%`;
      const nodeUi = m.address ? el('a', {href: `${m.address}/ui`, target: '_blank', rel: 'noopener'}, 'node view') : '';
      return el('div', {class: `node ${m.state}`, 'data-node': m.name, 'data-state': m.state},
        el('div', {class: 'node-head'}, el('strong', {class: 'name', title: m.node}, m.name), badge(m.state)),
        el('div', {class: 'node-load'}, `${m.sessions}/${m.capacity} sessions`, bar),
        el('dl', {},
          el('dt', {}, 'phi'), el('dd', {}, phi(m.phi)),
          el('dt', {}, 'rtt'), el('dd', {}, `${m.rtt_us} µs`),
          el('dt', {}, 'last heartbeat'), el('dd', {}, `${age(m.last_heartbeat_ms)} ago`),
          el('dt', {}, 'lease'), el('dd', {}, m.state === 'alive' ? 'held' : 'lost'),
        ),
        el('div', {class: 'node-foot mono'}, m.address || '', ' ', nodeUi),
      );
    });
    return el('div', {class: 'jurisdiction', 'data-jurisdiction': j}, el('h3', {}, j), el('div', {class: 'nodes'}, cards));
  });
  document.getElementById('map').replaceChildren(...groups);
  if (!members.length) document.getElementById('map').replaceChildren(el('p', {class: 'dim'}, 'No node has joined this colony yet.'));
}

function renderSessions(st) {
  const sessions = st.sessions || [];
  document.getElementById('n-sessions').textContent = sessions.length;
  const q = document.getElementById('filter').value.trim().toLowerCase();
  const handlers = new Map();
  for (const s of sessions) handlers.set(s.handler, (handlers.get(s.handler) || 0) + 1);
  document.getElementById('handlers').textContent = [...handlers].sort().map(([h, n]) => `${h}: ${n}`).join(' · ');
  const rows = sessions
    .filter(s => !q || [s.session_id, s.node_name, s.handler, s.state, s.waiting || ''].some(v => String(v).toLowerCase().includes(q)))
    .slice(0, 2000)
    .map(s => el('tr', {'data-session': s.session_id, 'data-holder': s.node_name, 'data-state': s.state, class: s.state},
      el('td', {class: 'mono'}, s.session_id),
      el('td', {}, s.handler),
      el('td', {}, s.node_name),
      el('td', {class: 'num'}, s.epoch),
      el('td', {}, badge(s.state)),
      el('td', {}, (s.replicas || []).map(r => names.get(r) || short(r)).join(', ') || '—'),
      el('td', {class: 'num'}, bytes(s.memory)),
      el('td', {}, s.acceptable_loss === '0s' ? 'zero loss' : (s.acceptable_loss || '')),
      el('td', {class: 'dim'}, s.waiting || ''),
    ));
  fillTable(document.getElementById('sessions'), rows);
  document.getElementById('sessions-empty').hidden = sessions.length > 0;
}

function renderCanopy(st) {
  const c = st.canopy || {enabled: false};
  document.getElementById('canopy-off').hidden = !!c.enabled;
  document.getElementById('canopy-on').hidden = !c.enabled;
  if (!c.enabled) return;
  document.getElementById('canopy-self').replaceChildren(
    tile('region', c.region || ''), tile('zone', c.zone || ''),
    tile('peer colonies', (c.peers || []).length), tile('treaties', (c.treaties || []).join(', ') || 'none'),
  );
  fillTable(document.getElementById('peers'), (c.peers || []).map(p => el('tr', {'data-colony': p.colony},
    el('td', {}, p.colony), el('td', {}, p.region), el('td', {}, (p.jurisdictions || []).join(', ')),
    el('td', {class: 'num'}, p.free_slots), el('td', {class: 'num'}, p.load_permille), el('td', {}, age(p.age_ms)),
    el('td', {class: 'mono'}, p.rc_api))));
  fillTable(document.getElementById('routed'), (c.routed_out || []).map(r => el('tr', {},
    el('td', {class: 'mono'}, r.session_id), el('td', {}, r.colony), el('td', {}, r.region), el('td', {}, r.node_name))));
}

let refreshing = false;
let again = false;
async function refresh() {
  if (refreshing) { again = true; return; }
  refreshing = true;
  try {
    const st = await getJson('/status');
    status = st;
    names = new Map((st.members || []).map(m => [m.node, m.name]));
    renderColony(st);
    renderSessions(st);
    renderCanopy(st);
    showError(null);
    stamp();
    document.body.dataset.ready = '1';
  } catch (e) {
    showError(e);
  } finally {
    refreshing = false;
    if (again) { again = false; setTimeout(refresh, 50); }
  }
}

// ---- events -----------------------------------------------------------------------------------

function describe(e) {
  switch (e.kind) {
    case 'node_joined': return `node ${e.name} joined (${e.jurisdiction})`;
    case 'node_dead': return `node ${e.name} declared dead after ${age(e.silent_ms)} of silence`;
    case 'node_draining': return `node ${e.name} is draining`;
    case 'session_placed': return `session ${e.session} placed on ${e.node} (epoch ${e.epoch})`;
    case 'session_closed': return `session ${e.session} closed on ${e.node}`;
    case 'session_orphaned': return `session ${e.session} lost its holder ${e.node}`;
    case 'session_waiting': return `session ${e.session} waits: ${e.reason}`;
    case 'session_moved': return `session ${e.session} ${e.how === 'failover' ? 'failed over' : 'handed over'} ${e.from} → ${e.to} (epoch ${e.epoch}${e.took_ms !== undefined ? `, ${e.took_ms} ms` : ''})`;
    default: return `${e.kind}`;
  }
}

function eventItem(e) {
  const t = new Date(e.unix_ms);
  return el('li', {'data-kind': e.kind, 'data-id': e.id, class: e.kind},
    el('time', {datetime: t.toISOString()}, t.toLocaleTimeString()), ' ', badge(e.kind.replace('_', ' '), e.kind), ' ', describe(e));
}

function renderEvents() {
  document.getElementById('events').replaceChildren(...events.map(eventItem));
  document.getElementById('recent').replaceChildren(...events.slice(0, 10).map(eventItem));
  document.getElementById('n-events').textContent = events.length;
}

let pending = null;
function soon() {
  if (pending) return;
  pending = setTimeout(() => { pending = null; refresh(); }, 100);
}

function connect() {
  const live = document.getElementById('live');
  const src = new EventSource(withToken('/ui/events'));
  src.onopen = () => { live.textContent = 'live'; live.className = 'badge on'; document.body.dataset.sse = 'open'; };
  src.onmessage = m => {
    let e;
    try { e = JSON.parse(m.data); } catch { return; }
    if (events.length && events[0].id >= e.id) return; // already shown (a replayed backlog)
    events.unshift(e);
    if (events.length > MAX_EVENTS) events.length = MAX_EVENTS;
    renderEvents();
    soon();
  };
  src.addEventListener('resync', () => soon());
  src.onerror = () => { live.textContent = 'live: reconnecting'; live.className = 'badge off'; document.body.dataset.sse = 'retry'; };
}

// ---- ledger -----------------------------------------------------------------------------------

let lastSettled = null;
async function refreshLedger() {
  try {
    const l = await getJson('/ui/ledger');
    document.getElementById('ledger-off').hidden = !!l.enabled;
    document.getElementById('ledger-on').hidden = !l.enabled;
    if (!l.enabled) return;
    const s = l.settler;
    const now = Date.now();
    let rate = '…';
    if (lastSettled) rate = ((s.settled - lastSettled.n) * 1000 / Math.max(1, now - lastSettled.t)).toFixed(1);
    lastSettled = {n: s.settled, t: now};
    document.getElementById('settler').replaceChildren(
      tile('co-signed', s.co_signed), tile('pending', s.pending), tile('batches', s.batches),
      tile('settled', s.settled), tile('receipts/s', rate), tile('rejected', s.rejected, s.rejected ? 'bad' : ''),
      tile('fees settled', micros(s.fees_settled_micros)), tile('interval', age(l.interval_ms)),
    );
    fillTable(document.getElementById('replicas'), l.replicas.map(r => r.error
      ? el('tr', {class: 'dead', 'data-replica': r.addr}, el('td', {class: 'mono'}, r.addr), el('td', {colspan: 9, class: 'warn'}, r.error))
      : el('tr', {'data-replica': r.addr, class: String(r.state).toLowerCase()},
        el('td', {class: 'mono'}, r.addr), el('td', {class: 'num'}, r.id), el('td', {}, badge(r.state, String(r.state).toLowerCase())),
        el('td', {class: 'num'}, r.term), el('td', {class: 'num'}, r.leader ?? '—'), el('td', {class: 'num'}, r.last_log_index ?? '—'),
        el('td', {class: 'num'}, r.batches), el('td', {class: 'num'}, r.receipts_settled), el('td', {class: 'num'}, micros(r.total_fees_micros)),
        el('td', {class: 'mono'}, r.state_hash))));
    const b = Array.isArray(l.balances) ? l.balances : [];
    fillTable(document.getElementById('balances'), b.length
      ? b.map(x => el('tr', {}, el('td', {class: 'mono'}, x.account), el('td', {class: 'num'}, micros(x.micros))))
      : [el('tr', {}, el('td', {colspan: 2, class: 'dim'}, l.balances && l.balances.error ? `balances unavailable: ${l.balances.error}` : 'no balances yet'))]);
  } catch (e) {
    showError(e);
  }
}

// ---- start ------------------------------------------------------------------------------------

document.getElementById('filter').addEventListener('input', () => status && renderSessions(status));
showTab();
refresh();
connect();
setInterval(refresh, POLL_MS);
setInterval(() => { if (currentTab() === 'ledger') refreshLedger(); }, LEDGER_MS);
