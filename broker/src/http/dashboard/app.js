// Sluice dashboard: a single page over the HTTP admin API (docs/http-api.md).
// Hand-written, no dependencies: hash routes, an escaping template tag, SVG charts.
'use strict';

const REFRESH_MS = 5000;
const MAX_ROWS = 500;
const SESSION_KEY = 'sluice.credentials';

// ---------------------------------------------------------------------------------------
// Templates: every interpolated value is escaped unless it is already markup (`raw`).

class Markup { constructor(s) { this.s = s; } toString() { return this.s; } }
const raw = (s) => new Markup(s);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
function piece(v) {
  if (v instanceof Markup) return v.s;
  if (Array.isArray(v)) return v.map(piece).join('');
  if (v === null || v === undefined || v === false) return '';
  return esc(v);
}
function html(strings, ...values) {
  let out = strings[0];
  values.forEach((v, i) => { out += piece(v) + strings[i + 1]; });
  return raw(out);
}
const $ = (sel, root = document) => root.querySelector(sel);
function setHtml(el, markup) { if (el) el.innerHTML = piece(markup); }

// ---------------------------------------------------------------------------------------
// Human units.

function compact(n, digits = 1) {
  const abs = Math.abs(n);
  const units = [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']];
  for (const [size, suffix] of units) {
    if (abs >= size) {
      const v = n / size;
      return (Math.abs(v) >= 100 ? Math.round(v) : +v.toFixed(digits)) + suffix;
    }
  }
  return String(Math.round(n * 10) / 10);
}
const fmtCount = (n) => (n === null || n === undefined ? '—' : Math.abs(n) < 100000 ? Number(n).toLocaleString('en-US') : compact(n));
const fmtRate = (n) => (n === null || n === undefined || Number.isNaN(n) ? '—' : n === 0 ? '0/s' : n < 10 ? `${+n.toFixed(1)}/s` : `${compact(n)}/s`);
function fmtBytes(b) {
  if (b === null || b === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = b;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${i === 0 ? v : v >= 100 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}
function fmtDuration(ms) {
  if (ms === null || ms === undefined) return '—';
  const s = ms / 1000;
  if (s < 1) return `${Math.round(ms)} ms`;
  if (s < 60) return `${Math.floor(s)} s`;
  const m = s / 60;
  if (m < 60) return `${Math.floor(m)} min`;
  const h = m / 60;
  if (h < 24) return `${Math.floor(h)} h ${Math.floor(m % 60)} min`;
  return `${Math.floor(h / 24)} d ${Math.floor(h % 24)} h`;
}
const fmtAgo = (ms) => (ms < 5000 ? 'just now' : `${fmtDuration(ms)} ago`);
const fmtClock = (ms) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false });
const fmtClockSeconds = (ms) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });

// `dead_lettered` is a number, or an object of counts by reason.
function total(v) {
  if (v === null || v === undefined) return null;
  if (typeof v === 'number') return v;
  if (typeof v === 'object') return Object.values(v).reduce((a, b) => a + (typeof b === 'number' ? b : 0), 0);
  return null;
}

// ---------------------------------------------------------------------------------------
// The API, with the credentials of this browser tab.

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

const session = {
  get() { try { return JSON.parse(sessionStorage.getItem(SESSION_KEY)); } catch { return null; } },
  set(user, password) { sessionStorage.setItem(SESSION_KEY, JSON.stringify({ user, password })); },
  clear() { sessionStorage.removeItem(SESSION_KEY); },
};

function basic(creds) {
  const bytes = new TextEncoder().encode(`${creds.user}:${creds.password}`);
  let bin = '';
  bytes.forEach((b) => { bin += String.fromCharCode(b); });
  return `Basic ${btoa(bin)}`;
}

async function request(path, { method = 'GET', body, creds = session.get() } = {}) {
  const headers = {
    Accept: 'application/json',
    // Tells the broker to leave out `WWW-Authenticate` on a 401: no browser password popup.
    'X-Requested-With': 'sluice-dashboard',
  };
  if (creds) headers.Authorization = basic(creds);
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, 'UNREACHABLE', 'The broker cannot be reached.');
  }
  const text = await response.text();
  let data = null;
  if (text) { try { data = JSON.parse(text); } catch { data = null; } }
  if (!response.ok) {
    const message = (data && data.message) || `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, data && data.error, message);
  }
  return data;
}

// A page's request: a 401 means the saved credentials no longer work, back to the login.
async function api(path, options) {
  try {
    return await request(path, options);
  } catch (e) {
    if (e.status === 401) {
      session.clear();
      loginMessage = 'The broker refused your credentials. Sign in again.';
      go('#/login');
    }
    throw e;
  }
}
const q = (name) => encodeURIComponent(name);

// ---------------------------------------------------------------------------------------
// Toasts and modals.

function toast(message, kind = '') {
  const el = document.createElement('div');
  el.className = `toast ${kind}`;
  el.setAttribute('role', 'status');
  el.textContent = message;
  $('#toasts').appendChild(el);
  setTimeout(() => el.remove(), 5000);
}

// Opens a dialog; `onConfirm(dialog)` may return a promise, and its error shows in the
// dialog. Resolves once it is closed.
function openModal({ title, body, confirmLabel = 'OK', danger = false, onConfirm, cancelLabel = 'Cancel' }) {
  const root = $('#modal-root');
  setHtml(root, html`
    <div class="modal-backdrop">
      <div class="modal" role="dialog" aria-modal="true" aria-labelledby="modal-title">
        <div class="modal-head"><h2 id="modal-title">${title}</h2></div>
        <div class="modal-body">${body}<div class="form-error" data-role="modal-error" hidden></div></div>
        <div class="modal-foot">
          <button type="button" class="btn" data-role="cancel">${cancelLabel}</button>
          ${onConfirm ? html`<button type="button" class="btn ${danger ? 'btn-danger solid' : 'btn-primary'}" data-role="confirm">${confirmLabel}</button>` : ''}
        </div>
      </div>
    </div>`);
  const dialog = $('.modal', root);
  const close = () => { setHtml(root, ''); document.removeEventListener('keydown', onKey); };
  const onKey = (e) => { if (e.key === 'Escape') close(); };
  document.addEventListener('keydown', onKey);
  $('[data-role=cancel]', dialog).addEventListener('click', close);
  const confirm = $('[data-role=confirm]', dialog);
  const firstInput = $('input, select', dialog);
  (firstInput || confirm || $('[data-role=cancel]', dialog)).focus();
  if (confirm) {
    const run = async () => {
      confirm.disabled = true;
      const error = $('[data-role=modal-error]', dialog);
      error.hidden = true;
      try {
        const keepOpen = await onConfirm(dialog);
        if (!keepOpen) close();
      } catch (e) {
        error.textContent = e.message;
        error.hidden = false;
        confirm.disabled = false;
      }
    };
    confirm.addEventListener('click', run);
    dialog.addEventListener('keydown', (e) => { if (e.key === 'Enter' && e.target.tagName === 'INPUT') run(); });
  }
  return { dialog, close };
}

// ---------------------------------------------------------------------------------------
// Charts: SVG lines (rates) and stacked areas (depth) over the last minutes.

const SVG_NS = 'http://www.w3.org/2000/svg';

// The step between the four gridlines: 1, 2 or 5 times a power of ten, so every label is a
// round number; at least `min` (whole messages for depths).
function niceStep(top, min) {
  const raw = Math.max(top / 4, min);
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (raw <= m * p) return m * p;
  return 10 * p;
}

// Draws `series` ([{name, color, values}]) at `times` (Unix ms) into `el`, over the
// `windowMs` before the last sample; `stacked` piles the series up as areas.
function drawChart(el, { times, series, windowMs, stacked = false, format = fmtCount, empty = 'Collecting data…' }) {
  el.dataset.points = String(times.length);
  const width = el.clientWidth || 600;
  const height = el.clientHeight || 220;
  const pad = { left: 48, right: 12, top: 10, bottom: 24 };
  const w = width - pad.left - pad.right;
  const h = height - pad.top - pad.bottom;
  const end = times.length ? times[times.length - 1] : Date.now();
  const start = end - windowMs;
  const x = (t) => pad.left + ((t - start) / windowMs) * w;

  const tops = times.map((_, i) => (stacked ? series.reduce((a, s) => a + (s.values[i] || 0), 0) : Math.max(0, ...series.map((s) => s.values[i] || 0))));
  const step = niceStep(Math.max(0, ...tops) * 1.05, stacked ? 1 : 0.5);
  const max = step * 4;
  const y = (v) => pad.top + h - (v / max) * h;

  let svg = `<svg xmlns="${SVG_NS}" viewBox="0 0 ${width} ${height}" preserveAspectRatio="none" role="img">`;
  for (let i = 0; i <= 4; i += 1) {
    const v = step * i;
    const yy = Math.round(y(v)) + 0.5;
    svg += `<line class="grid-line" x1="${pad.left}" x2="${width - pad.right}" y1="${yy}" y2="${yy}"/>`;
    svg += `<text class="axis-label" x="${pad.left - 8}" y="${yy + 4}" text-anchor="end">${esc(format(v))}</text>`;
  }
  const stepMs = windowMs > 6 * 60000 ? 120000 : 60000;
  for (let t = Math.ceil(start / stepMs) * stepMs; t <= end; t += stepMs) {
    svg += `<text class="axis-label" x="${x(t)}" y="${height - 6}" text-anchor="middle">${esc(fmtClock(t))}</text>`;
  }
  // Areas first, then lines: a stack's lowest line last, so it stays visible where the
  // series above it adds nothing; lines in order otherwise (a dashed last one shows through).
  const baseline = times.map(() => 0);
  const lines = [];
  series.forEach((s) => {
    const lows = stacked ? baseline.slice() : baseline;
    const highs = times.map((_, i) => (stacked ? lows[i] : 0) + (s.values[i] || 0));
    const line = times.map((t, i) => `${x(t).toFixed(1)},${y(highs[i]).toFixed(1)}`);
    if (times.length > 0) {
      const back = times.map((t, i) => `${x(t).toFixed(1)},${y(lows[i]).toFixed(1)}`).reverse();
      svg += `<polygon points="${line.concat(back).join(' ')}" fill="${s.color}" fill-opacity="${stacked ? 0.2 : 0.06}"/>`;
      const polyline = `<polyline points="${line.join(' ')}" fill="none" stroke="${s.color}" stroke-width="2" stroke-linejoin="round" stroke-linecap="round"${s.dashed ? ' stroke-dasharray="5 4"' : ''}/>`;
      if (stacked) lines.unshift(polyline);
      else lines.push(polyline);
    }
    if (stacked) highs.forEach((v, i) => { baseline[i] = v; });
  });
  svg += lines.join('');
  svg += `<line class="hover-line" data-role="hover" x1="0" x2="0" y1="${pad.top}" y2="${pad.top + h}" visibility="hidden"/>`;
  svg += '</svg>';
  el.innerHTML = svg + (times.length < 2 ? `<div class="placeholder">${esc(empty)}</div>` : '');

  // Hover: the values at the nearest sample.
  const tip = document.createElement('div');
  tip.className = 'tooltip';
  tip.hidden = true;
  el.appendChild(tip);
  const svgEl = el.querySelector('svg');
  const hover = svgEl.querySelector('[data-role=hover]');
  svgEl.addEventListener('mousemove', (ev) => {
    if (!times.length) return;
    const rect = svgEl.getBoundingClientRect();
    const px = ((ev.clientX - rect.left) / rect.width) * width;
    let best = 0;
    times.forEach((t, i) => { if (Math.abs(x(t) - px) < Math.abs(x(times[best]) - px)) best = i; });
    const bx = x(times[best]);
    hover.setAttribute('x1', bx);
    hover.setAttribute('x2', bx);
    hover.setAttribute('visibility', 'visible');
    tip.innerHTML = piece(html`<div class="t">${fmtClockSeconds(times[best])}</div>${series.map((s) => html`
      <div class="row"><span class="swatch" style="background:${s.color};width:8px;height:8px;border-radius:2px;display:inline-block"></span>${s.name}<span class="v">${format(s.values[best] || 0)}</span></div>`)}`);
    tip.hidden = false;
    const left = (bx / width) * rect.width;
    tip.style.left = `${left > rect.width / 2 ? left - tip.offsetWidth - 12 : left + 12}px`;
    tip.style.top = '8px';
  });
  svgEl.addEventListener('mouseleave', () => { tip.hidden = true; hover.setAttribute('visibility', 'hidden'); });
}

function legend(series, format) {
  return html`<div class="legend">${series.map((s) => html`
    <span class="item"><span class="swatch" style="background:${s.color}"></span>${s.name}
    <span class="v">${s.values.length ? format(s.values[s.values.length - 1]) : '—'}</span></span>`)}</div>`;
}

// The series' colours are the stylesheet's (`--c-NAME`), as values SVG attributes take.
function color(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(`--c-${name}`).trim() || '#888';
}

function rateSeries(samples) {
  return [
    { name: 'Publish', color: color('publish'), values: samples.map((s) => s.publish_rate) },
    { name: 'Deliver', color: color('deliver'), values: samples.map((s) => s.deliver_rate) },
    { name: 'Ack', color: color('ack'), values: samples.map((s) => s.ack_rate), dashed: true },
  ];
}
function depthSeries(samples) {
  return [
    { name: 'Ready', color: color('ready'), values: samples.map((s) => s.ready) },
    { name: 'Unacked', color: color('unacked'), values: samples.map((s) => s.unacked) },
  ];
}

// Fills the two chart cards (`rates` and `depth`) of a page from a history answer. The time
// axis spans what the history holds, from 2 minutes up to `maxWindowMs`.
function drawHistory(history, maxWindowMs) {
  const samples = history.samples || [];
  const times = samples.map((s) => s.at_ms);
  const span = times.length ? times[times.length - 1] - times[0] + (history.interval_ms || 5000) : 0;
  const windowMs = Math.min(maxWindowMs, Math.max(2 * 60000, Math.ceil(span / 60000) * 60000));
  const label = `Last ${Math.round(windowMs / 60000)} minutes`;
  document.querySelectorAll('[data-role=window]').forEach((el) => { el.textContent = label; });
  const rates = rateSeries(samples);
  const depth = depthSeries(samples);
  setHtml($('#rates-legend'), legend(rates, fmtRate));
  setHtml($('#depth-legend'), legend(depth, fmtCount));
  drawChart($('#rates-chart'), { times, series: rates, windowMs, format: fmtRate });
  drawChart($('#depth-chart'), { times, series: depth, windowMs, stacked: true, format: fmtCount });
}

function chartCards() {
  return html`
    <div class="grid grid-2">
      <section class="card">
        <div class="card-head"><h2>Message rates</h2><span class="sub"><span data-role="window">Last minutes</span>, messages per second</span><div class="right" id="rates-legend"></div></div>
        <div class="card-body"><div class="chart" id="rates-chart" data-points="0"></div></div>
      </section>
      <section class="card">
        <div class="card-head"><h2>Queued messages</h2><span class="sub"><span data-role="window">Last minutes</span>, ready + unacked</span><div class="right" id="depth-legend"></div></div>
        <div class="card-body"><div class="chart" id="depth-chart" data-points="0"></div></div>
      </section>
    </div>`;
}

// ---------------------------------------------------------------------------------------
// Sortable, filterable tables.

// `columns`: [{key, label, num, value(row), cell(row)}]; `state`: {sort, desc}.
function table({ id, columns, rows, state, emptyText, actions }) {
  const col = columns.find((c) => c.key === state.sort) || columns[0];
  const sorted = rows.slice().sort((a, b) => {
    const va = col.value(a);
    const vb = col.value(b);
    const r = typeof va === 'string' || typeof vb === 'string'
      ? String(va ?? '').localeCompare(String(vb ?? ''), undefined, { numeric: true })
      : (va ?? -Infinity) - (vb ?? -Infinity);
    return state.desc ? -r : r;
  });
  const shown = sorted.slice(0, MAX_ROWS);
  const head = columns.map((c) => {
    const on = c.key === col.key;
    // The arrow goes on the side away from the column's alignment edge, so labels line up
    // with their numbers.
    const arrow = on ? html`<span class="arrow">${state.desc ? '↓' : '↑'}</span>` : '';
    return html`<th class="sortable ${c.num ? 'num' : ''} ${on ? 'sorted' : ''}" data-sort="${c.key}" data-table="${id}" aria-sort="${on ? (state.desc ? 'descending' : 'ascending') : 'none'}">${c.num ? arrow : ''}${c.label}${c.num ? '' : arrow}</th>`;
  });
  const body = shown.map((r) => html`<tr>${columns.map((c) => html`<td class="${c.num ? 'num' : ''} ${c.className || ''}">${c.cell ? c.cell(r) : c.value(r)}</td>`)}${actions ? html`<td class="actions">${actions(r)}</td>` : ''}</tr>`);
  return html`
    <div class="table-wrap"><table class="data" id="${id}">
      <thead><tr>${head}${actions ? html`<th></th>` : ''}</tr></thead>
      <tbody>${body}</tbody>
    </table></div>
    ${rows.length === 0 ? html`<div class="empty">${emptyText}</div>` : ''}
    ${rows.length > MAX_ROWS ? html`<div class="table-foot">Showing ${MAX_ROWS} of ${fmtCount(rows.length)}; filter to narrow down.</div>` : ''}`;
}

function toggleSort(state, key, numeric) {
  if (state.sort === key) state.desc = !state.desc;
  else { state.sort = key; state.desc = numeric; }
}

// ---------------------------------------------------------------------------------------
// Pages. Each has `render(params)` once and `refresh()` every REFRESH_MS.

let loginMessage = '';
let current = null;
let refreshTimer = null;
let lastRefresh = 0;
let refreshFailed = false;

const pages = {};

pages.login = {
  title: 'Sign in',
  render() {
    const msg = loginMessage;
    loginMessage = '';
    setHtml($('#main'), html`
      <div class="login-wrap">
        <form class="card login" id="login-form" autocomplete="on">
          <div class="brand"><img src="/favicon.svg" alt="" width="26" height="26"><span>Sluice</span></div>
          <p class="lead">Sign in with a broker user</p>
          <div class="form-error" id="login-error" role="alert" ${msg ? '' : raw('hidden')}>${msg}</div>
          <label class="field">User name<input class="input" name="user" id="login-user" autocomplete="username" required value="guest"></label>
          <label class="field">Password<input class="input" name="password" id="login-password" type="password" autocomplete="current-password" required></label>
          <button class="btn btn-primary" type="submit" id="login-submit">Sign in</button>
        </form>
      </div>`);
    $('#login-password').focus();
    $('#login-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const user = $('#login-user').value;
      const password = $('#login-password').value;
      const error = $('#login-error');
      $('#login-submit').disabled = true;
      try {
        await request('/api/overview', { creds: { user, password } });
        session.set(user, password);
        go(sessionStorage.getItem('sluice.next') || '#/overview');
        sessionStorage.removeItem('sluice.next');
      } catch (err) {
        error.textContent = err.status === 401 ? 'Wrong user name or password.' : err.message;
        error.hidden = false;
        $('#login-submit').disabled = false;
        $('#login-password').select();
      }
    });
  },
};

pages.overview = {
  title: 'Overview',
  render() {
    setHtml($('#main'), html`
      <div class="page-head"><h1>Overview</h1><span class="sub" id="ov-version"></span></div>
      <div id="ov-banner"></div>
      <div class="tiles" id="ov-tiles"></div>
      <div id="ov-cluster"></div>
      ${chartCards()}
      <div class="grid grid-3">
        <section class="card"><div class="card-head"><h2>Deepest queues</h2><div class="right"><a href="#/queues">All queues →</a></div></div><div class="card-body flush" id="ov-top"></div></section>
        <section class="card"><div class="card-head"><h2>Since start</h2><span class="sub">messages, all queues</span></div><div class="card-body" id="ov-totals"></div></section>
      </div>`);
  },
  async refresh() {
    const [ov, history, queues, cluster] = await Promise.all([
      api('/api/overview'), api('/api/overview/history'), api('/api/queues'),
      // An older broker has no /api/cluster: no panel, not an error.
      api('/api/cluster').catch(() => ({ enabled: false })),
    ]);
    setHtml($('#ov-cluster'), clusterPanel(cluster));
    const last = (history.samples || [])[history.samples.length - 1] || {};
    setHtml($('#ov-version'), `version ${ov.version} · up ${fmtDuration(ov.uptime_seconds * 1000)}`);
    setHtml($('#ov-banner'), ov.blocked ? html`<div class="banner banner-danger" id="blocked-banner"><strong>Publishing is blocked.</strong><span>${ov.blocked_reason || 'The broker is out of a resource.'}</span></div>` : '');
    const diskLow = ov.disk_free_bytes !== null && ov.disk_free_bytes < ov.min_free_disk_bytes * 2;
    setHtml($('#ov-tiles'), html`
      ${tile('Queues', fmtCount(ov.queues), '', 'tile-queues')}
      ${tile('Connections', fmtCount(ov.connections), '', 'tile-connections')}
      ${tile('Consumers', fmtCount(ov.consumers), '', 'tile-consumers')}
      ${tile('Ready', fmtCount(ov.ready), `${fmtCount(ov.unacked)} unacked`, 'tile-ready')}
      ${tile('Publish', fmtRate(last.publish_rate ?? ov.publish_rate), `deliver ${fmtRate(last.deliver_rate)} · ack ${fmtRate(last.ack_rate ?? ov.ack_rate)}`, 'tile-rate')}
      ${tile('Disk free', fmtBytes(ov.disk_free_bytes), `blocks below ${fmtBytes(ov.min_free_disk_bytes)}`, 'tile-disk', diskLow ? 'badge-warn' : '')}`);
    drawHistory(history, 10 * 60000);
    const deepest = queues.slice().sort((a, b) => (b.ready + b.unacked) - (a.ready + a.unacked)).slice(0, 6);
    setHtml($('#ov-top'), deepest.length ? html`<table class="data"><thead><tr><th>Queue</th><th class="num">Ready</th><th class="num">Unacked</th><th class="num">Consumers</th><th class="num">Publish</th></tr></thead><tbody>
      ${deepest.map((x) => html`<tr><td class="name-cell"><a href="#/queues/${q(x.name)}">${x.name}</a></td><td class="num">${fmtCount(x.ready)}</td><td class="num">${fmtCount(x.unacked)}</td><td class="num">${fmtCount(x.consumers)}</td><td class="num">${fmtRate(rate(x, 'publish'))}</td></tr>`)}
      </tbody></table>` : html`<div class="empty">No queues yet.</div>`);
    setHtml($('#ov-totals'), totals(ov.message_stats));
  },
};

// The Cluster panel: members and the groups this node hosts, only on a node in a cluster.
function clusterPanel(c) {
  if (!c || !c.enabled) return '';
  const role = (m) => (m.id === c.metadata_leader ? 'leader' : m.voter ? 'voter' : 'learner');
  const replicas = (g) => g.replicas.map((r) => `${r.node}${r.lag === null ? '' : ` (lag ${fmtCount(r.lag)})`}`).join(', ');
  const groupName = (g) => (g.id === 0 ? 'metadata' : g.queue ? `${g.vhost === '/' ? '' : `${g.vhost}/`}${g.queue}` : `group ${g.id.toString(16)}`);
  return html`<section class="card" id="cluster-panel">
    <div class="card-head"><h2>Cluster</h2><span class="sub">node ${c.node_id} · metadata leader ${c.metadata_leader ?? 'none'} · term ${c.metadata_term}</span>
      <div class="right">${c.ready ? html`<span class="badge">ready</span>` : html`<span class="badge badge-warn">not ready</span>`}</div></div>
    <div class="card-body flush"><div class="grid grid-2">
      <table class="data" id="cluster-members"><thead><tr><th>Node</th><th>Role</th><th>Clients</th><th>Cluster</th></tr></thead><tbody>
        ${c.members.map((m) => html`<tr><td>${m.id}${m.id === c.node_id ? ' (this)' : ''}</td><td>${role(m)}</td><td>${m.client_addr}</td><td>${m.cluster_addr}</td></tr>`)}
      </tbody></table>
      <table class="data" id="cluster-groups"><thead><tr><th>Group</th><th class="num">Leader</th><th class="num">Term</th><th>Replicas</th></tr></thead><tbody>
        ${c.groups.map((g) => html`<tr><td>${groupName(g)}</td><td class="num">${g.leader ?? '–'}</td><td class="num">${g.term}</td><td>${replicas(g)}</td></tr>`)}
      </tbody></table>
    </div></div>
  </section>`;
}

function tile(label, value, note, id, warn = '') {
  return html`<div class="tile" id="${id}"><div class="label">${label} ${warn ? html`<span class="badge ${warn}">low</span>` : ''}</div><div class="value">${value}</div><div class="note">${note || raw('&nbsp;')}</div></div>`;
}

const STAT_NAMES = [
  ['published', 'Published'], ['delivered', 'Delivered'], ['redelivered', 'Redelivered'],
  ['acked', 'Acked'], ['nacked', 'Nacked'], ['rejected', 'Rejected'], ['expired', 'Expired'],
  ['dead_lettered', 'Dead-lettered'], ['confirmed', 'Confirmed'],
  ['duplicates_dropped', 'Duplicates dropped'],
];
function totals(stats) {
  if (!stats) return html`<p class="muted">This broker does not report message totals.</p>`;
  return html`<div class="stat-grid">${STAT_NAMES.filter(([k]) => k in stats).map(([k, label]) => html`<div class="stat" data-stat="${k}"><div class="label">${label}</div><div class="value">${fmtCount(total(stats[k]))}</div></div>`)}</div>`;
}

// A listed queue's rate: the broker's latest 5 s sample (as the charts), else what the queue
// keeps itself (whole messages per second; none for deliveries).
function rate(x, kind) {
  if (x.rates) return x.rates[kind];
  return kind === 'deliver' ? null : x[`${kind}_rate`];
}

const queueTable = { sort: 'name', desc: false, filter: '' };
const QUEUE_COLUMNS = [
  { key: 'name', label: 'Name', value: (x) => x.name, className: 'name-cell', cell: (x) => html`<a href="#/queues/${q(x.name)}">${x.name}</a>${x.exclusive ? html` <span class="badge">exclusive</span>` : ''}${x.durable ? '' : html` <span class="badge">transient</span>`}${chaosBadge(x.chaos)}` },
  { key: 'ready', label: 'Ready', num: true, value: (x) => x.ready, cell: (x) => fmtCount(x.ready) },
  { key: 'unacked', label: 'Unacked', num: true, value: (x) => x.unacked, cell: (x) => fmtCount(x.unacked) },
  { key: 'scheduled', label: 'Scheduled', num: true, value: (x) => x.scheduled ?? 0, cell: (x) => fmtCount(x.scheduled ?? 0) },
  { key: 'consumers', label: 'Consumers', num: true, value: (x) => x.consumers, cell: (x) => fmtCount(x.consumers) },
  { key: 'publish_rate', label: 'Publish', num: true, value: (x) => rate(x, 'publish'), cell: (x) => fmtRate(rate(x, 'publish')) },
  { key: 'deliver_rate', label: 'Deliver', num: true, value: (x) => rate(x, 'deliver'), cell: (x) => fmtRate(rate(x, 'deliver')) },
  { key: 'ack_rate', label: 'Ack', num: true, value: (x) => rate(x, 'ack'), cell: (x) => fmtRate(rate(x, 'ack')) },
  { key: 'oldest', label: 'Oldest ready', num: true, value: (x) => (x.ready > 0 ? x.oldest_ready_age_ms : null), cell: (x) => (x.ready > 0 && x.oldest_ready_age_ms !== undefined ? fmtDuration(x.oldest_ready_age_ms) : html`<span class="muted">—</span>`) },
  { key: 'bytes', label: 'Bytes', num: true, value: (x) => x.bytes, cell: (x) => fmtBytes(x.bytes) },
];

pages.queues = {
  title: 'Queues',
  data: [],
  render() {
    setHtml($('#main'), html`
      <div class="page-head"><h1>Queues</h1></div>
      <section class="card">
        <div class="toolbar">
          <input class="input search" id="queue-filter" type="search" placeholder="Filter by name" value="${queueTable.filter}" aria-label="Filter queues by name">
          <span class="count" id="queue-count"></span>
        </div>
        <div id="queue-table"></div>
      </section>`);
    $('#queue-filter').addEventListener('input', (e) => { queueTable.filter = e.target.value; this.draw(); });
  },
  async refresh() {
    this.data = await api('/api/queues');
    this.draw();
  },
  draw() {
    const needle = queueTable.filter.trim().toLowerCase();
    const rows = needle ? this.data.filter((x) => x.name.toLowerCase().includes(needle)) : this.data;
    setHtml($('#queue-count'), needle ? `${fmtCount(rows.length)} of ${fmtCount(this.data.length)} queues` : `${fmtCount(this.data.length)} queues`);
    setHtml($('#queue-table'), table({ id: 'queues', columns: QUEUE_COLUMNS, rows, state: queueTable, emptyText: needle ? 'No queue matches the filter.' : 'No queues yet.' }));
  },
  sort(key) {
    const col = QUEUE_COLUMNS.find((c) => c.key === key);
    toggleSort(queueTable, key, !!col.num);
    this.draw();
  },
};

const ARGUMENT_NAMES = [
  ['max_length', 'Max length', fmtCount], ['max_length_bytes', 'Max length bytes', fmtBytes],
  ['overflow', 'Overflow', String], ['message_ttl_ms', 'Message TTL', fmtDuration],
  ['dead_letter_exchange', 'Dead-letter exchange', (v) => (v === '' ? '(default)' : v)],
  ['dead_letter_routing_key', 'Dead-letter routing key', String],
  ['ack_timeout_ms', 'Ack timeout', fmtDuration], ['delivery_limit', 'Delivery limit', fmtCount],
  ['expires_ms', 'Expires when unused', fmtDuration],
  ['single_active_consumer', 'Single active consumer', (v) => (v ? 'yes' : 'no')],
  ['max_message_bytes', 'Max message size', fmtBytes],
  ['max_priority', 'Max priority', String],
  ['retry_backoff', 'Retry backoff', (b) => `${fmtDuration(b.initial_ms)} × ${b.multiplier_percent / 100} up to ${fmtDuration(b.max_ms)}`],
  ['dedup_window_ms', 'Dedup window', fmtDuration],
  ['dedup_window_count', 'Dedup window (ids)', fmtCount],
];

const queuePage = { name: '', browseLimit: 20, browsed: null };

pages.queue = {
  title: 'Queue',
  render(name) {
    queuePage.name = name;
    queuePage.browsed = null;
    setHtml($('#main'), html`
      <div class="crumb"><a href="#/queues">Queues</a> /</div>
      <div class="page-head">
        <h1 id="queue-name">${name}</h1><span id="queue-badges"></span>
        <div class="actions">
          <button class="btn" type="button" data-action="move">Move messages…</button>
          <button class="btn btn-danger" type="button" data-action="purge">Purge…</button>
        </div>
      </div>
      <div class="tiles" id="q-tiles"></div>
      ${chartCards()}
      <div class="grid grid-2">
        <section class="card"><div class="card-head"><h2>Consumers</h2></div><div class="card-body flush" id="q-consumers"></div></section>
        <section class="card"><div class="card-head"><h2>Arguments</h2></div><div class="card-body" id="q-arguments"></div></section>
      </div>
      <div class="grid grid-2" id="q-dlq-row">
        <section class="card"><div class="card-head"><h2>Dead-lettered from this queue</h2><span class="sub">by reason, since start</span></div><div class="card-body" id="q-dead"></div></section>
        <section class="card"><div class="card-head"><h2>Message totals</h2><span class="sub">since start</span></div><div class="card-body" id="q-totals"></div></section>
      </div>
      ${chaosCard()}
      <section class="card" id="browse">
        <div class="card-head"><h2>Messages</h2><span class="sub">the first ready messages, read without taking them</span>
          <div class="right">
            <select class="input" id="browse-limit" aria-label="How many messages">${[10, 20, 50, 100, 500].map((n) => html`<option value="${n}" ${n === queuePage.browseLimit ? raw('selected') : ''}>First ${n}</option>`)}</select>
            <button class="btn" type="button" data-action="browse">Browse</button>
          </div>
        </div>
        <div class="card-body flush" id="browse-result"><div class="empty">Browse shows the first messages with their headers and payload.</div></div>
      </section>`);
    $('#browse-limit').addEventListener('change', (e) => { queuePage.browseLimit = Number(e.target.value); });
  },
  async refresh() {
    const name = queuePage.name;
    const [info, history, consumers] = await Promise.all([
      api(`/api/queues/${q(name)}`),
      api(`/api/queues/${q(name)}/history`),
      api('/api/consumers'),
    ]);
    if (name !== queuePage.name) return;
    const last = (history.samples || [])[history.samples.length - 1] || {};
    setHtml($('#queue-badges'), html`${info.durable ? html`<span class="badge badge-accent">durable</span>` : html`<span class="badge">transient</span>`}
      ${info.auto_delete ? html`<span class="badge">auto-delete</span>` : ''}${info.exclusive ? html`<span class="badge">exclusive</span>` : ''}${chaosBadge(info.chaos)}`);
    setHtml($('#q-tiles'), html`
      ${tile('Ready', fmtCount(info.ready), info.scheduled ? `${fmtCount(info.scheduled)} scheduled` : '', 'q-ready')}
      ${tile('Unacked', fmtCount(info.unacked), '', 'q-unacked')}
      ${tile('Consumers', fmtCount(info.consumers), '', 'q-consumer-count')}
      ${tile('Oldest ready', info.ready > 0 && info.oldest_ready_age_ms !== undefined ? fmtDuration(info.oldest_ready_age_ms) : '—', 'age of the head message', 'q-oldest')}
      ${tile('Publish', fmtRate(last.publish_rate), `deliver ${fmtRate(last.deliver_rate)} · ack ${fmtRate(last.ack_rate)}`, 'q-rate')}
      ${tile('Bytes', fmtBytes(info.bytes), 'ready and unacked', 'q-bytes')}`);
    drawHistory(history, 5 * 60000);
    const mine = consumers.filter((c) => c.queue === name);
    setHtml($('#q-consumers'), mine.length ? html`<table class="data"><thead><tr><th>Consumer tag</th><th class="num">Connection</th><th class="num">Prefetch</th><th class="num">Unacked</th><th>State</th><th class="num">Priority</th><th></th></tr></thead><tbody>
      ${mine.map((c) => html`<tr><td class="mono">${c.consumer_tag}</td><td class="num"><a href="#/connections">#${c.connection_id}</a></td><td class="num">${c.prefetch === 0 ? '∞' : fmtCount(c.prefetch)}</td><td class="num">${fmtCount(c.unacked)}</td>
        <td>${c.active === false ? 'standby' : 'active'}</td><td class="num">${c.priority ?? 0}</td>
        <td class="actions">${cancelButton(c)}</td></tr>`)}
      </tbody></table>` : html`<div class="empty">No consumers.</div>`);
    const args = info.arguments || {};
    setHtml($('#q-arguments'), html`<dl class="kv">${ARGUMENT_NAMES.map(([k, label, f]) => (args[k] === null || args[k] === undefined
      ? html`<dt>${label}</dt><dd class="unset">not set</dd>`
      : html`<dt>${label}</dt><dd>${f(args[k])}</dd>`))}</dl>`);
    const stats = info.message_stats;
    setHtml($('#q-dead'), deadLetterBars(info.dead_lettered_by_reason ?? (stats && stats.dead_lettered)));
    setHtml($('#q-totals'), totals(stats));
    drawChaos(info.chaos);
  },
};

function deadLetterBars(dead) {
  if (dead === null || dead === undefined) return html`<p class="muted">This broker does not report dead-letter counts.</p>`;
  const entries = typeof dead === 'number' ? [['all reasons', dead]] : Object.entries(dead);
  const sum = entries.reduce((a, [, n]) => a + n, 0);
  if (sum === 0) return html`<p class="muted" id="dead-none">No message was dead-lettered from this queue.</p>`;
  const max = Math.max(...entries.map(([, n]) => n));
  return html`<div class="bars">${entries.map(([reason, n]) => html`
    <div class="bar-row" data-reason="${reason}"><span>${reason}</span><div class="track"><div class="fill" style="width:${((n / max) * 100).toFixed(1)}%"></div></div><span class="n">${fmtCount(n)}</span></div>`)}</div>`;
}

function cancelButton(c) {
  return html`<button class="btn btn-sm btn-danger" type="button" data-action="cancel-consumer" data-connection="${c.connection_id}" data-tag="${c.consumer_tag}" data-queue="${c.queue}">Cancel</button>`;
}

// Headers come as an object, or as a list of pairs / {key, value}; read them as pairs.
function headerPairs(headers) {
  if (!headers) return [];
  if (Array.isArray(headers)) return headers.map((h) => (Array.isArray(h) ? h : [h.key ?? h.name, h.value]));
  return Object.entries(headers);
}
const showValue = (v) => (v === '' ? '""' : v !== null && typeof v === 'object' ? JSON.stringify(v) : String(v));
// A header value as people read it: times (`...-time-ms`) as a clock time.
function showHeader(key, v) {
  if (typeof v === 'number' && /-time-ms$/.test(key)) return `${fmtClockSeconds(v)} (${fmtAgo(Date.now() - v)})`;
  return showValue(v);
}

function renderBrowsed(messages) {
  if (!messages.length) return html`<div class="empty">The queue has no ready message.</div>`;
  const reasons = new Map();
  messages.forEach((m) => {
    const r = headerPairs(m.headers).find(([k]) => k === 'x-death-reason');
    if (r) reasons.set(showValue(r[1]), (reasons.get(showValue(r[1])) || 0) + 1);
  });
  const now = Date.now();
  return html`
    ${reasons.size ? html`<div class="toolbar" id="browse-reasons"><span class="muted">Dead-letter reasons among these messages:</span>${[...reasons].map(([r, n]) => html`<span class="badge badge-danger">${r} · ${n}</span>`)}</div>` : ''}
    <div class="table-wrap"><table class="data" id="browse-table"><thead><tr><th class="num">Seq</th><th class="num">Age</th><th class="num">Deliveries</th><th>Routing key</th><th class="headers-col">Headers</th><th class="payload-col">Payload</th></tr></thead><tbody>
    ${messages.map((m, i) => {
      const pairs = headerPairs(m.headers);
      const age = m.age_ms ?? (m.enqueued_at_ms ? now - m.enqueued_at_ms : null);
      const encoded = m.payload_encoding && m.payload_encoding !== 'string' && m.payload_encoding !== 'utf8';
      return html`<tr>
        <td class="num mono">${m.seq}</td>
        <td class="num">${fmtDuration(age)}</td>
        <td class="num">${fmtCount(m.delivery_count ?? 0)}${m.redelivered ? html` <span class="badge badge-warn">redelivered</span>` : ''}</td>
        <td class="mono">${m.routing_key ?? ''}</td>
        <td class="wrap"><div class="chips">${pairs.length ? pairs.map(([k, v]) => html`<span class="chip ${k === 'x-death-reason' ? 'chip-danger' : ''}" title="${k}: ${showValue(v)}"><b>${k}</b> ${showHeader(k, v)}</span>`) : html`<span class="muted">none</span>`}</div></td>
        <td class="wrap"><div class="payload" data-payload="${i}">${m.payload ?? ''}</div>
          <span class="muted payload-toggle">${[
            fmtBytes(m.payload_bytes ?? (m.payload || '').length),
            m.properties && m.properties.content_type,
            encoded ? m.payload_encoding : null,
            m.truncated ? `first ${fmtBytes((m.payload || '').length)} shown` : null,
          ].filter(Boolean).join(' · ')}</span>
          ${(m.payload || '').length > 200 ? html` · <a href="#" data-action="toggle-payload" data-index="${i}" class="payload-toggle">expand</a>` : ''}</td>
      </tr>`;
    })}</tbody></table></div>`;
}

const connTable = { sort: 'connection_id', desc: false };
const CONNECTION_COLUMNS = [
  { key: 'connection_id', label: 'ID', num: true, value: (c) => c.connection_id, cell: (c) => html`<span class="mono">#${c.connection_id}</span>` },
  { key: 'name', label: 'Client', value: (c) => c.connection_name || c.client_product || '', cell: (c) => html`<div><strong>${c.connection_name || c.client_product || 'unnamed'}</strong></div><div class="muted" style="font-size:12px">${[c.client_product, c.client_version].filter(Boolean).join(' ') || 'no client properties'}</div>` },
  { key: 'peer', label: 'Peer', value: (c) => c.peer || '', cell: (c) => html`<span class="mono">${c.peer || '—'}</span>` },
  { key: 'user', label: 'User', value: (c) => c.user },
  { key: 'connected', label: 'Connected', num: true, value: (c) => c.connected_at_ms, cell: (c) => html`<span title="${new Date(c.connected_at_ms).toLocaleString()}">${fmtAgo(Date.now() - c.connected_at_ms)}</span>` },
  { key: 'bytes_in', label: 'In', num: true, value: (c) => c.bytes_in, cell: (c) => fmtBytes(c.bytes_in) },
  { key: 'bytes_out', label: 'Out', num: true, value: (c) => c.bytes_out, cell: (c) => fmtBytes(c.bytes_out) },
  { key: 'unsettled', label: 'Unconfirmed', num: true, value: (c) => c.unsettled_publishes, cell: (c) => fmtCount(c.unsettled_publishes) },
  { key: 'consumers', label: 'Consumers', num: true, value: (c) => c.consumers, cell: (c) => fmtCount(c.consumers) },
];

pages.connections = {
  title: 'Connections',
  data: [],
  render() {
    setHtml($('#main'), html`<div class="page-head"><h1>Connections</h1><span class="sub" id="conn-count"></span></div><section class="card" id="conn-table"></section>`);
  },
  async refresh() { this.data = await api('/api/connections'); this.draw(); },
  draw() {
    setHtml($('#conn-count'), `${fmtCount(this.data.length)} open`);
    setHtml($('#conn-table'), table({
      id: 'connections', columns: CONNECTION_COLUMNS, rows: this.data, state: connTable, emptyText: 'No client is connected.',
      actions: (c) => html`<button class="btn btn-sm btn-danger" type="button" data-action="close-connection" data-connection="${c.connection_id}" data-label="${c.connection_name || c.peer || ''}">Close</button>`,
    }));
  },
  sort(key) { toggleSort(connTable, key, !!CONNECTION_COLUMNS.find((c) => c.key === key).num); this.draw(); },
};

const consumerTable = { sort: 'queue', desc: false };
const CONSUMER_COLUMNS = [
  { key: 'queue', label: 'Queue', value: (c) => c.queue, className: 'name-cell', cell: (c) => html`<a href="#/queues/${q(c.queue)}">${c.queue}</a>` },
  { key: 'consumer_tag', label: 'Consumer tag', value: (c) => c.consumer_tag, cell: (c) => html`<span class="mono">${c.consumer_tag}</span>` },
  { key: 'connection_id', label: 'Connection', num: true, value: (c) => c.connection_id, cell: (c) => html`<span class="mono">#${c.connection_id}</span>` },
  { key: 'prefetch', label: 'Prefetch', num: true, value: (c) => c.prefetch, cell: (c) => (c.prefetch === 0 ? '∞' : fmtCount(c.prefetch)) },
  { key: 'unacked', label: 'Unacked', num: true, value: (c) => c.unacked, cell: (c) => fmtCount(c.unacked) },
];
// Circuit breaking (docs/circuit-breaking.md): a badge per state, '-' without a breaker.
const CIRCUIT_BADGES = { closed: 'badge-ok', open: 'badge-danger', 'half-open': 'badge-warn' };
const circuitBadge = (c) => (c.circuit
  ? html`<span class="badge ${CIRCUIT_BADGES[c.circuit.state] || ''}" data-circuit="${c.circuit.state}" title="${c.circuit.failures} failures">${c.circuit.state}</span>${c.circuit.until_ms ? html` <span class="muted">until ${fmtClockSeconds(c.circuit.until_ms)}</span>` : ''}`
  : html`<span class="muted">-</span>`);
CONSUMER_COLUMNS.push({ key: 'circuit', label: 'Circuit', value: (c) => (c.circuit ? c.circuit.state : ''), cell: circuitBadge });

pages.consumers = {
  title: 'Consumers',
  data: [],
  render() {
    setHtml($('#main'), html`<div class="page-head"><h1>Consumers</h1><span class="sub" id="consumer-count"></span></div><section class="card" id="consumer-table"></section>`);
  },
  async refresh() { this.data = await api('/api/consumers'); this.draw(); },
  draw() {
    setHtml($('#consumer-count'), `${fmtCount(this.data.length)} active`);
    setHtml($('#consumer-table'), table({ id: 'consumers', columns: CONSUMER_COLUMNS, rows: this.data, state: consumerTable, emptyText: 'No consumers.', actions: cancelButton }));
  },
  sort(key) { toggleSort(consumerTable, key, !!CONSUMER_COLUMNS.find((c) => c.key === key).num); this.draw(); },
};

// Exchanges, and the split of the weighted and consistent-hash ones, with a weight slider per
// bound queue: moving one re-binds the queue with the new weight (the broker changes it in
// place, live; docs/routing.md).
const exchangeTable = { sort: 'name', desc: false };
const EXCHANGE_COLUMNS = [
  { key: 'name', label: 'Name', value: (x) => x.name, className: 'name-cell', cell: (x) => (x.name === '' ? html`<span class="muted">(default)</span>` : x.name) },
  { key: 'vhost', label: 'Vhost', value: (x) => x.vhost },
  { key: 'kind', label: 'Kind', value: (x) => x.kind, cell: (x) => html`<span class="badge ${SPLITS[x.kind] ? 'badge-accent' : ''}">${x.kind}</span>${x.hash_header ? html` <span class="muted">by header ${x.hash_header}</span>` : ''}` },
  { key: 'bindings', label: 'Bindings', num: true, value: (x) => x.bindings, cell: (x) => fmtCount(x.bindings) },
  { key: 'alternate_exchange', label: 'Alternate', value: (x) => x.alternate_exchange || '', cell: (x) => x.alternate_exchange || html`<span class="muted">—</span>` },
  { key: 'durable', label: 'Durable', value: (x) => (x.durable ? 'yes' : 'no') },
];
// The kinds that send each message to one queue, and the range of their weights.
const SPLITS = {
  weighted: { min: 0, max: 100, what: 'share of the messages' },
  'consistent-hash': { min: 1, max: 100, what: 'share of the keys' },
};

const weightOf = (b) => Number(b.arguments['x-weight'] ?? 1);

pages.exchanges = {
  title: 'Exchanges',
  data: { exchanges: [], bindings: [], queues: [] },
  // Set while a slider is held: a refresh then leaves the splits alone.
  holding: false,
  render() {
    setHtml($('#main'), html`<div class="page-head"><h1>Exchanges</h1><span class="sub" id="exchange-count"></span></div><div id="splits"></div><section class="card" id="exchange-table"></section>`);
  },
  async refresh() {
    const [exchanges, bindings, queues] = await Promise.all([api('/api/exchanges'), api('/api/bindings'), api('/api/queues')]);
    this.data = { exchanges, bindings, queues };
    this.draw();
  },
  draw() {
    const { exchanges, bindings } = this.data;
    const count = (x) => bindings.filter((b) => b.vhost === x.vhost && b.exchange === x.name).length;
    const rows = exchanges.map((x) => ({ ...x, bindings: count(x) }));
    setHtml($('#exchange-count'), `${fmtCount(rows.length)} exchanges`);
    setHtml($('#exchange-table'), table({ id: 'exchanges', columns: EXCHANGE_COLUMNS, rows, state: exchangeTable, emptyText: 'No exchanges.' }));
    if (!this.holding) setHtml($('#splits'), exchanges.filter((x) => SPLITS[x.kind]).map((x) => this.split(x)));
  },
  // One card per weighted or consistent-hash exchange: each queue's weight, its share of the
  // total, and the publish rate it sees now.
  split(x) {
    const range = SPLITS[x.kind];
    const bound = this.data.bindings.filter((b) => b.vhost === x.vhost && b.exchange === x.name);
    const total = bound.reduce((sum, b) => sum + weightOf(b), 0);
    const queue = (name) => this.data.queues.find((r) => r.vhost === x.vhost && r.name === name);
    const share = (w) => (total ? `${+((100 * w) / total).toFixed(1)}%` : '—');
    const rows = bound.map((b) => {
      const w = weightOf(b);
      const qr = queue(b.queue);
      return html`<div class="split-row" data-queue="${b.queue}">
        <a class="name-cell" href="#/queues/${q(b.queue)}">${b.queue}</a>
        <input type="range" class="weight" min="${range.min}" max="${Math.max(range.max, w)}" value="${w}" aria-label="Weight of ${b.queue}"
          data-exchange="${x.name}" data-vhost="${x.vhost}" data-queue="${b.queue}" data-weight="${w}">
        <span class="n weight-value">${fmtCount(w)}</span>
        <span class="n share">${share(w)}</span>
        <span class="n muted">${qr ? fmtRate(rate(qr, 'publish')) : '—'}</span>
      </div>`;
    });
    return html`<section class="card split" data-vhost="${x.vhost}" data-exchange="${x.name}">
      <div class="card-head"><h2>${x.name}</h2><span class="sub">${x.kind}: each message to one queue, by ${range.what}${x.hash_header ? ` (header ${x.hash_header})` : ''}</span></div>
      <div class="card-body">${bound.length ? html`<div class="split-row split-head"><span>Queue</span><span>Weight</span><span></span><span class="n">Share</span><span class="n">Publish</span></div>${rows}` : html`<div class="empty">No queue is bound.</div>`}</div>
    </section>`;
  },
  sort(key) { toggleSort(exchangeTable, key, !!EXCHANGE_COLUMNS.find((c) => c.key === key).num); this.draw(); },
};

// While a weight slider moves, its number and the shares follow; on release the queue is bound
// again with the new weight.
document.addEventListener('pointerdown', (ev) => { if (ev.target.matches('input.weight')) pages.exchanges.holding = true; });
// A press that moved nothing fires no `change`: letting go ends the hold all the same.
for (const end of ['pointerup', 'pointercancel']) {
  document.addEventListener(end, () => { pages.exchanges.holding = false; });
}
document.addEventListener('input', (ev) => {
  const slider = ev.target;
  if (!slider.matches('input.weight')) return;
  const card = slider.closest('.split');
  const sliders = [...card.querySelectorAll('input.weight')];
  const total = sliders.reduce((sum, s) => sum + Number(s.value), 0);
  for (const s of sliders) {
    const row = s.closest('.split-row');
    row.querySelector('.weight-value').textContent = fmtCount(Number(s.value));
    row.querySelector('.share').textContent = total ? `${+((100 * Number(s.value)) / total).toFixed(1)}%` : '—';
  }
});
document.addEventListener('change', async (ev) => {
  const slider = ev.target;
  if (!slider.matches('input.weight')) return;
  const { exchange, vhost, queue } = slider.dataset;
  const weight = Number(slider.value);
  try {
    await api(`/api/bindings?vhost=${q(vhost)}`, { method: 'POST', body: { exchange, queue, weight } });
    slider.dataset.weight = String(weight);
    toast(`${queue} now has weight ${fmtCount(weight)} on ${exchange}.`, 'ok');
  } catch (e) {
    slider.value = slider.dataset.weight;
    toast(e.message, 'error');
  } finally {
    pages.exchanges.holding = false;
    refreshNow();
  }
});

// ---------------------------------------------------------------------------------------
// Actions, by `data-action`.

const actions = {
  logout() { session.clear(); go('#/login'); },

  'toggle-payload'(el, ev) {
    ev.preventDefault();
    const p = $(`[data-payload="${el.dataset.index}"]`);
    p.classList.toggle('open');
    el.textContent = p.classList.contains('open') ? 'collapse' : 'expand';
  },

  async browse() {
    const target = $('#browse-result');
    setHtml(target, html`<div class="empty">Reading…</div>`);
    try {
      const messages = await api(`/api/queues/${q(queuePage.name)}/messages?limit=${queuePage.browseLimit}`);
      setHtml(target, renderBrowsed(messages));
    } catch (e) {
      setHtml(target, html`<div class="empty">${e.status === 404 && e.message === 'no such endpoint' ? 'This broker cannot browse messages.' : e.message}</div>`);
    }
  },

  purge() {
    const name = queuePage.name;
    const ready = $('#q-ready .value') ? $('#q-ready .value').textContent : '';
    openModal({
      title: `Purge ${name}?`,
      body: html`<p>This deletes the <strong>${ready}</strong> ready messages of <strong>${name}</strong>. Messages delivered to consumers stay with them. This cannot be undone.</p>`,
      confirmLabel: 'Purge messages',
      danger: true,
      async onConfirm() {
        const r = await api(`/api/queues/${q(name)}/contents`, { method: 'DELETE' });
        toast(`Purged ${fmtCount(r.messages)} messages from ${name}.`, 'ok');
        refreshNow();
      },
    });
  },

  async move() {
    const source = queuePage.name;
    let queues = [];
    try { queues = await api('/api/queues'); } catch (e) { toast(e.message, 'error'); return; }
    const others = queues.map((x) => x.name).filter((n) => n !== source);
    openModal({
      title: `Move messages from ${source}`,
      body: html`
        <p>Ready messages move, oldest first, to another queue. A message is never lost, and if the broker stops half-way it is at most duplicated.</p>
        <label class="field">Destination queue
          <select class="input" id="move-destination">${others.map((n) => html`<option value="${n}">${n}</option>`)}</select></label>
        <label class="field"><span>How many <span class="hint">(leave empty for every ready message)</span></span>
          <input class="input" id="move-max" type="number" min="1" placeholder="all"></label>
        <div id="move-progress" hidden>
          <div class="progress"><div class="fill" style="width:0%"></div></div>
          <div class="muted" id="move-status"></div>
        </div>`,
      confirmLabel: 'Move',
      async onConfirm(dialog) {
        const destination = $('#move-destination', dialog).value;
        if (!destination) throw new Error('Choose a destination queue.');
        const maxText = $('#move-max', dialog).value.trim();
        const body = { destination };
        if (maxText) body.max = Number(maxText);
        const started = await api(`/api/queues/${q(source)}/move`, { method: 'POST', body });
        $('#move-progress', dialog).hidden = false;
        $('[data-role=confirm]', dialog).hidden = true;
        $('[data-role=cancel]', dialog).textContent = 'Close';
        await followMove(started.id, dialog);
        refreshNow();
        return true;
      },
    });
  },

  'close-connection'(el) {
    const id = el.dataset.connection;
    const label = el.dataset.label;
    openModal({
      title: `Close connection #${id}?`,
      body: html`<p>The client${label ? html` <strong>${label}</strong>` : ''} is told why and disconnected; its unacked messages return to their queues.</p>
        <label class="field"><span>Reason <span class="hint">(sent to the client)</span></span><input class="input" id="close-reason" value="closed by an operator from the dashboard" maxlength="200"></label>`,
      confirmLabel: 'Close connection',
      danger: true,
      async onConfirm(dialog) {
        const reason = $('#close-reason', dialog).value.trim() || 'closed by an operator';
        await api(`/api/connections/${q(id)}`, { method: 'DELETE', body: { reason } });
        toast(`Connection #${id} closed.`, 'ok');
        refreshNow();
      },
    });
  },

  'cancel-consumer'(el) {
    const { connection, tag, queue } = el.dataset;
    openModal({
      title: 'Cancel consumer?',
      body: html`<p>Consumer <strong class="mono">${tag}</strong> on <strong>${queue}</strong> stops receiving messages; its unacked messages return to the queue. Its connection stays open.</p>`,
      confirmLabel: 'Cancel consumer',
      cancelLabel: 'Keep it',
      danger: true,
      async onConfirm() {
        await api(`/api/connections/${q(connection)}/consumers/${q(tag)}`, { method: 'DELETE' });
        toast(`Consumer ${tag} cancelled.`, 'ok');
        refreshNow();
      },
    });
  },
};

// Polls a move until it is done or failed, showing its progress in the dialog.
async function followMove(id, dialog) {
  const bar = $('.progress', dialog);
  const fill = $('.progress .fill', dialog);
  const status = $('#move-status', dialog);
  for (;;) {
    const m = await api(`/api/moves/${q(id)}`);
    const of = m.requested === null || m.requested === undefined ? '' : ` of ${fmtCount(m.requested)}`;
    const share = m.requested ? Math.min(100, (m.moved / m.requested) * 100) : (m.state === 'running' ? 50 : 100);
    fill.style.width = `${m.state === 'done' ? 100 : share}%`;
    if (m.state === 'done') {
      bar.classList.add('done');
      status.textContent = `Done: moved ${fmtCount(m.moved)} messages to ${m.destination}.`;
      status.id = 'move-done';
      toast(`Moved ${fmtCount(m.moved)} messages to ${m.destination}.`, 'ok');
      return;
    }
    if (m.state === 'failed') {
      bar.classList.add('failed');
      status.textContent = `Failed after ${fmtCount(m.moved)} messages: ${m.error || 'unknown error'}`;
      return;
    }
    status.textContent = `Moving… ${fmtCount(m.moved)}${of} messages`;
    await new Promise((r) => setTimeout(r, 400));
  }
}

document.addEventListener('click', (ev) => {
  const sortable = ev.target.closest('th[data-sort]');
  if (sortable && current && current.sort) { current.sort(sortable.dataset.sort); return; }
  const el = ev.target.closest('[data-action]');
  if (el && actions[el.dataset.action]) {
    Promise.resolve(actions[el.dataset.action](el, ev)).catch((e) => toast(e.message, 'error'));
  }
});

// ---------------------------------------------------------------------------------------
// Trace: "why is this message stuck" (GET /api/trace/{message_id}).

const fmtTime = (ms) => new Date(ms).toISOString().replace('T', ' ').replace('Z', ' UTC');
const STATE_BADGE = { ready: 'badge-accent', delivered: 'badge-warn', scheduled: '', moving: '', gone: 'badge-ok' };
const EVENT_BADGE = { nacked: 'badge-warn', rejected: 'badge-danger', 'lease-expired': 'badge-danger', 'dead-lettered': 'badge-danger', acked: 'badge-ok', delivered: 'badge-accent' };

function eventDetail(e) {
  const reason = e.reason ? html` · reason <q class="reason">${e.reason}</q>` : '';
  switch (e.event) {
    case 'stored': return html`from exchange <span class="mono">${e.exchange || '(default)'}</span>, routing key <span class="mono">${e.routing_key}</span>`;
    case 'delivered': return html`to ${e.consumer_tag ? html`consumer <span class="mono">${e.consumer_tag}</span>` : 'a get'} on <a href="#/connections">connection #${e.connection}</a> · delivery ${e.delivery_count} · lease until ${fmtTime(e.lease_deadline_ms)}`;
    case 'acked': return html`by connection #${e.connection}`;
    case 'nacked': return html`requeued${e.delay_ms ? html`, ready again in ${fmtDuration(e.delay_ms)}` : ''}${reason}`;
    case 'rejected': return html`not requeued${reason}`;
    case 'lease-expired': return html`connection #${e.connection} held it past its lease; ready again`;
    case 'lease-extended': return html`lease until ${fmtTime(e.lease_deadline_ms)}`;
    case 'returned': return html`${e.cause}`;
    case 'dead-lettered': return e.dropped ? html`${e.reason}; dropped (no dead-letter exchange took it)` : html`${e.reason}; to exchange <span class="mono">${e.exchange || '(default)'}</span>`;
    case 'moved': return html`to queue ${e.to_queue}`;
    default: return '';
  }
}

function traceCard(m) {
  const now = m.state === 'delivered' ? html` · lease until ${fmtTime(m.deadline_ms)}` : m.state === 'scheduled' && m.deadline_ms ? html` · ready at ${fmtTime(m.deadline_ms)}` : '';
  return html`<section class="card trace-card" data-queue="${m.queue}">
    <div class="card-head"><h2><a href="#/queues/${q(m.queue)}">${m.queue}</a></h2>
      <span class="badge ${STATE_BADGE[m.state] || ''}" data-state="${m.state}">${m.state}</span>
      <span class="sub">seq ${m.message_seq}${now}${m.trace_id ? html` · trace <span class="mono">${m.trace_id}</span>` : ''}</span></div>
    <div class="card-body flush"><div class="table-wrap"><table class="data trace-events"><thead><tr><th>Time (UTC)</th><th>Event</th><th>Details</th></tr></thead><tbody>
      ${m.events.map((e, i) => html`${i === 1 && m.events_dropped ? html`<tr><td></td><td colspan="2" class="muted">… ${m.events_dropped} older events dropped</td></tr>` : ''}<tr><td class="mono nowrap">${fmtTime(e.at_ms).slice(0, 23)}</td><td><span class="badge ${EVENT_BADGE[e.event] || ''}">${e.event}</span></td><td>${eventDetail(e)}</td></tr>`)}
    </tbody></table></div></div></section>`;
}

pages.trace = {
  title: 'Trace',
  id: '',
  render(param) {
    this.id = param || '';
    setHtml($('#main'), html`<div class="page-head"><h1>Trace a message</h1><span class="sub">What happened to the messages with a message id, in every queue you may read</span></div>
      <form class="card trace-form" id="trace-form"><div class="card-body"><label class="field">Message id
        <span class="row"><input class="input mono" id="trace-id" name="message_id" placeholder="e.g. order-17" value="${this.id}" required><button class="btn btn-primary" type="submit">Trace</button></span></label></div></form>
      <div id="trace-results"></div>`);
    $('#trace-form').addEventListener('submit', (e) => {
      e.preventDefault();
      go(`#/trace/${q($('#trace-id').value.trim())}`);
    });
    if (!this.id) $('#trace-id').focus();
  },
  async refresh() {
    if (!this.id) return;
    const answer = await api(`/api/trace/${q(this.id)}`);
    setHtml($('#trace-results'), answer.messages.length === 0
      ? html`<div class="banner banner-info">No queue remembers a message with id <span class="mono">${this.id}</span>. Queues follow messages that have a message id, for a while after they leave (--message-history-window-ms).</div>`
      : html`${answer.messages.map(traceCard)}${answer.truncated ? html`<div class="banner banner-warn">More messages have this id; the first are shown.</div>` : ''}`);
  },
};

// ---------------------------------------------------------------------------------------
// Routing and refresh.

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function parseRoute() {
  const path = location.hash.replace(/^#\/?/, '');
  if (path.startsWith('queues/')) return { page: 'queue', param: decodeURIComponent(path.slice('queues/'.length)) };
  if (path.startsWith('trace/')) return { page: 'trace', param: decodeURIComponent(path.slice('trace/'.length)) };
  const page = path.split('/')[0] || 'overview';
  return { page: pages[page] ? page : 'overview' };
}

async function refreshNow() {
  if (!current || !current.refresh) return;
  const page = current;
  try {
    await page.refresh();
    refreshFailed = false;
    lastRefresh = Date.now();
  } catch (e) {
    if (page !== current) return;
    if (e.status === 401) return;
    refreshFailed = true;
    if (e.status === 404 && page === pages.queue) {
      setHtml($('#main'), html`<div class="page-head"><h1>${queuePage.name}</h1></div><div class="banner banner-warn">This queue does not exist (any more). <a href="#/queues">Back to the queues</a></div>`);
      current = null;
      return;
    }
    toast(e.message, 'error');
  } finally {
    showLiveness();
  }
}

function showLiveness() {
  const live = $('#live');
  const age = Date.now() - lastRefresh;
  live.classList.toggle('error', refreshFailed);
  live.classList.toggle('stale', !refreshFailed && age > REFRESH_MS * 3);
  $('#live-text').textContent = refreshFailed ? 'Not updating' : lastRefresh ? `Updated ${fmtAgo(age)}` : 'Live';
}

function route() {
  const { page, param } = parseRoute();
  const creds = session.get();
  const wantsLogin = location.hash.startsWith('#/login');
  if (!creds && !wantsLogin) {
    sessionStorage.setItem('sluice.next', location.hash || '#/overview');
    go('#/login');
    return;
  }
  clearInterval(refreshTimer);
  if (wantsLogin) {
    $('#topbar').hidden = true;
    current = pages.login;
    document.title = 'Sign in · Sluice';
    pages.login.render();
    return;
  }
  $('#topbar').hidden = false;
  $('#who').textContent = creds.user;
  document.querySelectorAll('[data-nav]').forEach((a) => a.classList.toggle('active', a.dataset.nav === (page === 'queue' ? 'queues' : page)));
  current = pages[page];
  document.title = `${page === 'queue' ? param : current.title} · Sluice`;
  current.render(param);
  refreshNow();
  refreshTimer = setInterval(() => { if (!document.hidden) refreshNow(); else showLiveness(); }, REFRESH_MS);
}

window.addEventListener('hashchange', route);
// Charts follow the window's width.
let resizeTimer = null;
window.addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(refreshNow, 150); });
route();

// ---------------------------------------------------------------------------------------
// Chaos injection (docs/chaos.md): a badge wherever a queue with an injection is shown, and a
// panel on the queue's page to start one (administrators) or clear it.

const CHAOS_CODES = ['INTERNAL_ERROR', 'QUEUE_FULL', 'STORAGE_FULL', 'MEMORY_LIMIT', 'MESSAGE_TOO_LARGE', 'RESOURCE_EXHAUSTED'];

function chaosBadge(chaos) {
  if (!chaos || !chaos.active) return '';
  const until = new Date(chaos.until_ms).toLocaleTimeString();
  return html` <span class="badge badge-chaos" title="A chaos injection runs on this queue until ${until}">CHAOS · until ${until}</span>`;
}

function chaosCard() {
  return html`<section class="card" id="q-chaos-card"><div class="card-head"><h2>Chaos injection</h2><span class="sub">deliberate faults for testing consumers, bounded in time</span>
    <div class="right" id="q-chaos-actions"></div></div><div class="card-body" id="q-chaos"></div></section>`;
}

function chaosModes(c) {
  const modes = [];
  if (c.delay) modes.push(`delay ${c.delay.distribution} ms (${c.delay.percent}%)`);
  if (c.drop) modes.push(`drop ${c.drop.percent}% (back after ${fmtDuration(c.drop.redeliver_after_ms)})`);
  if (c.duplicate) modes.push(`duplicate ${c.duplicate.percent}%`);
  if (c.fail_publish) modes.push(`fail publishes ${c.fail_publish.percent}% with ${c.fail_publish.code}`);
  if (c.short_lease) modes.push(`short lease ${c.short_lease.percent}% (${fmtDuration(c.short_lease.lease_ms)})`);
  return modes;
}

function drawChaos(chaos) {
  if (!chaos) return;
  const s = chaos.stats || {};
  setHtml($('#q-chaos-actions'), chaos.active
    ? html`<button class="btn btn-danger" type="button" data-action="chaos-clear">Clear chaos</button>`
    : html`<button class="btn" type="button" data-action="chaos-set">Inject chaos…</button>`);
  setHtml($('#q-chaos'), html`
    ${chaos.active
    ? html`<p id="q-chaos-state"><span class="badge badge-chaos">CHAOS</span> until ${new Date(chaos.until_ms).toLocaleString()} (${fmtDuration(chaos.remaining_ms)} left): ${chaosModes(chaos).join(', ')}</p>`
    : html`<p id="q-chaos-state" class="muted">No injection runs: the queue behaves normally.</p>`}
    <dl class="kv" id="q-chaos-stats">
      <dt>Deliveries delayed</dt><dd>${fmtCount(s.delayed ?? 0)}</dd>
      <dt>Deliveries dropped (and redelivered)</dt><dd>${fmtCount(s.dropped ?? 0)}</dd>
      <dt>Deliveries duplicated</dt><dd>${fmtCount(s.duplicated ?? 0)}</dd>
      <dt>Publishes refused</dt><dd>${fmtCount(s.publishes_failed ?? 0)}</dd>
      <dt>Leases shortened / ran out early</dt><dd>${fmtCount(s.leases_shortened ?? 0)} / ${fmtCount(s.leases_expired_early ?? 0)}</dd>
    </dl>`);
}

// A number field of the chaos form, or null when left empty.
function chaosNumber(dialog, id) {
  const text = $(`#${id}`, dialog).value.trim();
  if (!text) return null;
  const n = Number(text);
  if (!Number.isFinite(n)) throw new Error(`${text} is not a number.`);
  return n;
}

actions['chaos-set'] = () => {
  const name = queuePage.name;
  openModal({
    title: `Inject chaos into ${name}`,
    body: html`
      <p>For a limited time the queue misbehaves on purpose. No message is lost: held-back deliveries come back, refused publishes are reported to their publisher. Fill in the modes you want (percentages 0–100).</p>
      <label class="field">Duration in minutes <input class="input" id="chaos-duration" type="number" min="1" max="1440" value="10"></label>
      <div class="grid grid-2">
        <label class="field"><span>Delay <span class="hint">fixed:MS, uniform:MIN-MAX or exponential:MEAN</span></span><input class="input" id="chaos-delay" placeholder="uniform:100-500"></label>
        <label class="field">Delay % <input class="input" id="chaos-delay-percent" type="number" min="0" max="100" step="any" value="100"></label>
        <label class="field">Drop % <input class="input" id="chaos-drop" type="number" min="0" max="100" step="any"></label>
        <label class="field">Redeliver dropped after (ms) <input class="input" id="chaos-drop-after" type="number" min="10" value="1000"></label>
        <label class="field">Duplicate % <input class="input" id="chaos-duplicate" type="number" min="0" max="100" step="any"></label>
        <span></span>
        <label class="field">Fail publishes % <input class="input" id="chaos-fail" type="number" min="0" max="100" step="any"></label>
        <label class="field">With code <select class="input" id="chaos-fail-code">${CHAOS_CODES.map((c) => html`<option value="${c}">${c}</option>`)}</select></label>
        <label class="field">Short lease % <input class="input" id="chaos-lease" type="number" min="0" max="100" step="any"></label>
        <label class="field">Short lease (ms) <input class="input" id="chaos-lease-ms" type="number" min="10" value="1000"></label>
      </div>`,
    confirmLabel: 'Start injection',
    danger: true,
    async onConfirm(dialog) {
      const minutes = chaosNumber(dialog, 'chaos-duration');
      if (!minutes) throw new Error('Give a duration.');
      const body = { duration_ms: Math.round(minutes * 60000) };
      const delay = $('#chaos-delay', dialog).value.trim();
      if (delay) body.delay = { distribution: delay, percent: chaosNumber(dialog, 'chaos-delay-percent') ?? 100 };
      const drop = chaosNumber(dialog, 'chaos-drop');
      if (drop !== null) body.drop = { percent: drop, redeliver_after_ms: chaosNumber(dialog, 'chaos-drop-after') ?? 1000 };
      const duplicate = chaosNumber(dialog, 'chaos-duplicate');
      if (duplicate !== null) body.duplicate = { percent: duplicate };
      const fail = chaosNumber(dialog, 'chaos-fail');
      if (fail !== null) body.fail_publish = { percent: fail, code: $('#chaos-fail-code', dialog).value };
      const lease = chaosNumber(dialog, 'chaos-lease');
      if (lease !== null) body.short_lease = { percent: lease, lease_ms: chaosNumber(dialog, 'chaos-lease-ms') ?? 1000 };
      const set = await api(`/api/queues/${q(name)}/chaos`, { method: 'PUT', body });
      toast(`Chaos on ${name} until ${new Date(set.until_ms).toLocaleTimeString()}.`, 'ok');
      refreshNow();
    },
  });
};

actions['chaos-clear'] = async () => {
  const name = queuePage.name;
  await api(`/api/queues/${q(name)}/chaos`, { method: 'DELETE' });
  toast(`Chaos on ${name} cleared: the queue behaves normally.`, 'ok');
  refreshNow();
};
