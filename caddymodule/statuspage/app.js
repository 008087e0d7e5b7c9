// The status page of the operator site. Plain JavaScript, no framework,
// nothing loaded from elsewhere (the Content-Security-Policy forbids it).
//
// The live state comes from GET events (server-sent events) read with
// fetch() and a stream reader, not EventSource, because EventSource cannot
// send the Authorization header the site's token needs. The token, when
// the site has one, is asked for on the first 401 and kept in this tab's
// sessionStorage only.
'use strict';

const TOKEN_KEY = 'dtable-cluster-admin-token';
const $ = (id) => document.getElementById(id);
let state = null;          // the last state event
let clockOffset = 0;       // server clock minus browser clock, from the last state
let selected = null;       // the bucket whose details are shown
let lastHeard = 0;         // when the stream last said anything (event or keep-alive)

// ---- token and requests ----

function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }

function headers(extra) {
  const h = Object.assign({}, extra);
  if (token()) h.Authorization = 'Bearer ' + token();
  return h;
}

let tokenWaiters = [];
// needToken shows the token dialog and resolves once a token is entered.
function needToken() {
  setLive('token', 'token needed');
  const dlg = $('token-dialog');
  if (!dlg.open) dlg.showModal();
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

$('token-form').addEventListener('submit', () => {
  sessionStorage.setItem(TOKEN_KEY, $('token-input').value.trim());
  $('token-input').value = '';
  $('forget-token').hidden = false;
  const waiters = tokenWaiters;
  tokenWaiters = [];
  waiters.forEach((w) => w());
});

$('forget-token').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});

// post sends an action (no body but JSON, as the site demands) and returns
// {status, body}; on 401 it asks for the token and tries once more.
async function post(path) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const resp = await fetch(path, {method: 'POST', headers: headers({'Content-Type': 'application/json'}),
      body: '{}', cache: 'no-store'});
    let body = null;
    try { body = await resp.json(); } catch (e) { body = {error: 'answer is not JSON (' + resp.status + ')'}; }
    if (resp.status === 401 && attempt === 0) { await needToken(); continue; }
    return {status: resp.status, body};
  }
  return {status: 401, body: {error: 'the token was refused'}};
}

// ---- the live stream ----

function setLive(s, text) { const el = $('live'); el.dataset.state = s; el.textContent = text; }

async function follow() {
  let delay = 1000;
  for (;;) { // reconnects for as long as the page is open
    try {
      const resp = await fetch('events', {headers: headers({Accept: 'text/event-stream'}), cache: 'no-store'});
      if (resp.status === 401) { await needToken(); continue; }
      if (!resp.ok || !resp.body) throw new Error('GET events: ' + resp.status);
      setLive('live', 'live');
      delay = 1000;
      lastHeard = Date.now();
      await readEvents(resp.body.getReader());
    } catch (e) {
      console.warn('status stream:', e);
    }
    setLive('reconnecting', 'reconnecting…');
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

// readEvents splits the stream into events (blank-line separated) until it ends.
async function readEvents(reader) {
  const decoder = new TextDecoder();
  let buf = '';
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    lastHeard = Date.now();
    buf += decoder.decode(value, {stream: true}).replace(/\r\n?/g, '\n');
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let type = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue; // a comment: keep-alive
        const c = line.indexOf(':');
        const field = c < 0 ? line : line.slice(0, c);
        const val = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
        if (field === 'event') type = val;
        else if (field === 'data') data.push(val);
      }
      if (type === 'state' && data.length) render(JSON.parse(data.join('\n')));
    }
  }
}

// ---- rendering ----

// Node colours: ten clearly different light colours that all carry dark
// text (beyond ten nodes they repeat). A node's colour is picked by a hash of its
// id (FNV-1a, mixed), so it is the same on every page and every proxy; if
// two current nodes pick the same colour, the one later by id takes the
// next free one (the same choice everywhere for the same nodes).
const PALETTE = ['#8cb8e8', '#f6a55a', '#8fd18a', '#ec8585', '#c1a2dc', '#f0d264', '#7fd0c9', '#f5a9cf',
  '#c9a184', '#b4b85a'];
let nodeColours = new Map();

function hash(id) {
  let h = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) { h ^= id.charCodeAt(i); h = Math.imul(h, 0x01000193) >>> 0; }
  h ^= h >>> 15; h = Math.imul(h, 0x2c1b3c6d) >>> 0;
  return (h ^ (h >>> 12)) >>> 0;
}

function assignColours(ids) {
  nodeColours = new Map();
  const used = new Set();
  for (const id of [...ids].sort()) {
    let i = hash(id) % PALETTE.length;
    for (let k = 0; k < PALETTE.length && used.has(i); k++) i = (i + 1) % PALETTE.length;
    used.add(i);
    nodeColours.set(id, PALETTE[i]);
  }
}

// colour of a node; one that is no longer listed (a gone node in the
// recent moves) gets its hash's colour.
function colour(id) { return nodeColours.get(id) || PALETTE[hash(id) % PALETTE.length]; }

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v; else if (k === 'text') e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

function serverNow() { return Date.now() + clockOffset; }

function ago(t) {
  if (!t) return '–';
  const s = Math.max(0, (serverNow() - Date.parse(t)) / 1000);
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min ' + Math.floor(s % 60) + ' s';
  return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
}

function clock(t) { return new Date(t).toLocaleTimeString([], {hour12: false}); }

function pct(x) { return (x * 100).toFixed(x < 0.1 ? 1 : 0) + ' %'; }

const cells = [];
function buildGrid() {
  const grid = $('grid');
  for (let i = 0; i < 256; i++) {
    const c = el('div', {class: 'cell', role: 'button', tabindex: '0', 'data-bucket': i.toString(16).padStart(2, '0')});
    c.textContent = c.dataset.bucket;
    c.addEventListener('click', () => select(c.dataset.bucket));
    c.addEventListener('keydown', (ev) => { if (ev.key === 'Enter' || ev.key === ' ') select(c.dataset.bucket); });
    cells.push(c);
    grid.append(c);
  }
}

function bucketText(b) {
  const parts = ['bucket ' + b.bucket, b.node_id ? 'owner ' + b.node_id : 'unassigned'];
  if (b.epoch) parts.push('epoch ' + b.epoch);
  if (b.load != null) parts.push('load ' + b.load.toFixed(2));
  if (b.node_id && !b.routable) parts.push('owner not registered');
  if (b.moving_to) parts.push('moving to ' + b.moving_to + ' (' + (b.moving_reason || 'no reason given') + ') for ' + ago(b.moving_since));
  if (b.queued_to) parts.push('queued to ' + b.queued_to + (b.queued_reason ? ' (' + b.queued_reason + ')' : ''));
  return parts.join(' · ');
}

function renderGrid(s) {
  s.buckets.forEach((b, i) => {
    const c = cells[i];
    c.dataset.owner = b.node_id || '';
    c.dataset.epoch = b.epoch || 0;
    c.dataset.movingTo = b.moving_to || '';
    c.dataset.queuedTo = b.queued_to || '';
    if (b.load != null) c.dataset.load = b.load; else delete c.dataset.load;
    c.classList.toggle('unassigned', !b.node_id);
    c.classList.toggle('unroutable', !!b.node_id && !b.routable);
    c.classList.toggle('moving', !!b.moving_to);
    c.classList.toggle('queued', !!b.queued_to);
    c.classList.toggle('selected', b.bucket === selected);
    if (!b.node_id) c.style.background = '';
    else if (b.moving_to) c.style.background = 'linear-gradient(135deg, ' + colour(b.node_id) + ' 0 55%, ' + colour(b.moving_to) + ' 55% 100%)';
    else c.style.background = colour(b.node_id);
    c.title = bucketText(b);
  });
  const legend = $('legend');
  legend.replaceChildren(...s.nodes.map((n) => el('span', {}, swatch(n.node_id), n.node_id)),
    el('span', {}, el('span', {class: 'swatch unassigned'}), 'unassigned'),
    el('span', {}, el('span', {class: 'swatch moving'}), 'moving → target colour'),
    el('span', {}, el('span', {class: 'swatch queued'}), 'queued (waits for a slot)'));
  renderDetail();
}

function swatch(id) { const s = el('span', {class: 'swatch'}); s.style.background = colour(id); return s; }

function select(b) {
  selected = b;
  cells.forEach((c) => c.classList.toggle('selected', c.dataset.bucket === b));
  renderDetail();
}

function renderDetail() {
  if (!state || selected == null) return;
  const b = state.buckets[parseInt(selected, 16)];
  const d = $('detail');
  d.replaceChildren(el('b', {text: 'Bucket ' + b.bucket}), ' — ' + bucketText(b).split(' · ').slice(1).join(' · '));
  const last = (state.recent_moves || []).find((m) => m.bucket === b.bucket);
  if (last) d.append(el('br'), 'last move seen: ' + last.kind + ' ' + last.from + ' → ' + last.to +
    (last.reason ? ' (' + last.reason + ')' : '') + ' at ' + clock(last.at));
}

function renderSummary(s) {
  $('s-version').textContent = s.version ? 'v' + s.version : 'none';
  $('s-version').title = 'etcd revision ' + s.revision + (s.assignment_error ? ' — assignment: ' + s.assignment_error : '');
  $('s-version').className = s.assignment_error ? 'warn' : '';
  const leader = $('s-leader');
  leader.textContent = s.leader || (s.leader_error ? 'unknown' : 'no monitor');
  leader.title = s.leader_error || '';
  leader.className = s.leader ? '' : 'bad';
  const etcd = $('s-etcd');
  etcd.textContent = s.etcd_connected ? 'connected' : 'disconnected';
  etcd.className = s.etcd_connected ? 'good' : 'bad';
  etcd.title = (s.etcd || []).join(', ') + (s.last_error ? '\nlast error: ' + s.last_error : '');
  $('s-moving').textContent = s.moving.length + ' / ' + s.queued;
  $('s-auto').textContent = s.auto_rebalance ? 'on' : 'off';
  tick();
}

// tick updates what changes with time alone.
function tick() {
  if (!state) return;
  $('s-age').textContent = ago(state.table_built_at);
  if ($('live').dataset.state === 'live' && Date.now() - lastHeard > 40000) setLive('reconnecting', 'stream silent…');
}

function renderNodes(s) {
  const rows = s.nodes.map((n) => {
    const act = el('td', {class: 'actions'});
    if (n.state === 'drained') act.append(button('Undrain…', () => plan('undrain', n.node_id)));
    else if (n.state === 'live') act.append(button('Drain…', () => plan('drain', n.node_id)));
    const urls = el('td', {class: 'urls'});
    if (n.node_url) urls.append(el('div', {title: 'node_url: where browsers reach it', text: n.node_url}));
    if (n.local_node_url) urls.append(el('div', {title: 'local_node_url: where this proxy sends requests', text: n.local_node_url}));
    const name = el('td', {class: 'mono', text: n.node_id});
    if (n.error) name.append(el('div', {class: 'bad', text: n.error}));
    return el('tr', {'data-node': n.node_id, 'data-state': n.state},
      el('td', {}, swatch(n.node_id)), name,
      el('td', {}, el('span', {class: 'state ' + n.state, text: n.state.replace('_', ' ')})),
      el('td', {class: 'num', text: String(n.buckets)}),
      el('td', {class: 'num', text: n.load_share != null ? pct(n.load_share) : '–'}),
      urls, act);
  });
  if (s.unassigned) rows.push(el('tr', {}, el('td', {}, el('span', {class: 'swatch unassigned'})), el('td', {text: 'unassigned'}),
    el('td'), el('td', {class: 'num', text: String(s.unassigned)}), el('td'), el('td'), el('td')));
  $('nodes').tBodies[0].replaceChildren(...rows);
}

function button(text, fn) { const b = el('button', {type: 'button', text}); b.addEventListener('click', fn); return b; }

function renderMoves(s) {
  $('moves-since').textContent = 'seen by this proxy since ' + new Date(s.moves_seen_since).toLocaleString([], {hour12: false}) +
    ' (last ' + 50 + ')';
  const items = (s.recent_moves || []).map((m) => el('li', {'data-kind': m.kind, 'data-bucket': m.bucket},
    el('span', {class: 't', text: clock(m.at)}),
    el('span', {class: 'kind ' + m.kind, text: m.kind}),
    el('span', {class: 'mono', text: m.bucket}),
    el('span', {}, swatch(m.from), m.from + ' → ', swatch(m.to), m.to),
    el('span', {class: 't', text: (m.reason || (m.kind === 'forced' ? 'no handoff seen' : '')) +
      (m.took_ms ? ' · ' + (m.took_ms / 1000).toFixed(2) + ' s' : '')})));
  if (!items.length) items.push(el('li', {class: 'empty', text: 'No moves seen yet.'}));
  $('moves').replaceChildren(...items);
}

function render(s) {
  clockOffset = Date.parse(s.now) - Date.now();
  state = s;
  document.body.dataset.version = s.version;
  assignColours(s.nodes.map((n) => n.node_id));
  renderSummary(s);
  renderGrid(s);
  renderNodes(s);
  renderMoves(s);
}

// ---- actions: a dry run first, its plan shown, then Apply ----

function message(text, info) {
  const m = $('message');
  m.textContent = text;
  m.className = info ? 'info' : '';
  m.hidden = !text;
}

function opPath(op, node) { return op === 'rebalance' ? 'rebalance/' : op + '/' + encodeURIComponent(node); }
function opTitle(op, node) { return op === 'rebalance' ? 'Rebalance' : (op === 'drain' ? 'Drain ' : 'Undrain ') + node; }

let pending = null; // the action whose plan is shown

async function plan(op, node) {
  message('');
  const r = await post(opPath(op, node) + '?dry_run=1');
  if (r.status !== 200) { message(opTitle(op, node) + ' (dry run): ' + (r.body.error || r.status)); return; }
  pending = {op, node};
  showPlan(opTitle(op, node) + ' — plan (dry run)', r.body, true);
}

function showPlan(title, resp, canApply) {
  $('plan-title').textContent = title;
  const moves = resp.moves || [];
  const body = [el('p', {id: 'plan-summary', text: moves.length ? moves.length + ' move' + (moves.length === 1 ? '' : 's') +
    (resp.waves ? ' in about ' + resp.waves + ' wave' + (resp.waves === 1 ? '' : 's') + ' of handoffs' : '') +
    ', planned on version ' + resp.previous_version + ' by monitor ' + resp.leader : 'Nothing to move (version ' + resp.version + ').'})];
  const per = resp.moves_per_node || {};
  const counts = resp.counts || {};
  const ids = [...new Set([...Object.keys(per), ...Object.keys(counts)])].sort();
  if (ids.length) {
    const t = el('table', {}, el('thead', {}, el('tr', {}, el('th', {text: 'node'}), el('th', {class: 'num', text: 'gains'}),
      el('th', {class: 'num', text: 'loses'}), el('th', {class: 'num', text: 'buckets after'}))));
    const tb = el('tbody');
    ids.forEach((id) => tb.append(el('tr', {}, el('td', {}, swatch(id), id),
      el('td', {class: 'num', text: String((per[id] || {}).gained || 0)}), el('td', {class: 'num', text: String((per[id] || {}).lost || 0)}),
      el('td', {class: 'num', text: counts[id] != null ? String(counts[id]) : '–'}))));
    t.append(tb);
    body.push(t);
  }
  if (moves.length) body.push(el('div', {class: 'moves-list mono', text: moves.map((m) => m.bucket + ' ' + (m.from || '–') + '→' + (m.to || '–')).join('  ')}));
  if (resp.warnings && resp.warnings.length) body.push(el('div', {class: 'warnings', text: resp.warnings.join('; ')}));
  $('plan-body').replaceChildren(...body);
  $('plan-apply').hidden = !canApply;
  $('plan-cancel').textContent = canApply ? 'Cancel' : 'Close';
  $('plan-apply').disabled = false;
  $('plan').hidden = false;
}

$('rebalance').addEventListener('click', () => plan('rebalance'));
$('plan-cancel').addEventListener('click', () => { $('plan').hidden = true; pending = null; });
$('plan-apply').addEventListener('click', async () => {
  if (!pending) return;
  const {op, node} = pending;
  $('plan-apply').disabled = true;
  const r = await post(opPath(op, node));
  pending = null;
  if (r.status !== 200) { message(opTitle(op, node) + ': ' + (r.body.error || r.status)); $('plan').hidden = true; return; }
  showPlan(opTitle(op, node) + ' — done', r.body, false);
  message(opTitle(op, node) + ': version ' + r.body.version + '; ' + (r.body.started || []).length + ' handoffs started, ' +
    (r.body.queued || []).length + ' queued, ' + (r.body.direct || []).length + ' moved directly.', true);
});

if (token()) $('forget-token').hidden = false;
buildGrid();
setInterval(tick, 1000);
follow();
