// The cxr web page: a review station. Upload a radiograph or open an entry of the review queue,
// see the prediction with its trust flags, the radiograph beside the explainer's overlay
// (opacity, window and level), label it for training and undo, by mouse or keys. Plain JS, no
// build step, no network access beyond this server. document.body.dataset.state tells tests
// where it is: idle, uploading, opening, classified, explaining, explained, labelled, undone,
// error; dataset.entry names the queue entry shown.
'use strict';

const $ = (id) => document.getElementById(id);
const state = {
  id: null, classes: [], explainers: [], preview: null, request: 0,
  // The queue's entries as listed, the one shown (-1: none), and this page's labels (for undo).
  entries: [], entry: -1, labelled: [],
};

// The seed's names for the classes.
const CLASS_NAMES = { covid: 'COVID-19', normal: 'No finding', pneumonia: 'Pneumonia', skip: 'Skip' };
const className = (c) => CLASS_NAMES[c] || c;

const FLAG_TEXT = {
  'unfamiliar': 'Unfamiliar image',
  'implausible-lungs': 'Implausible lungs',
  'not-a-chest-radiograph': 'Not a chest radiograph',
};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function setState(name) { document.body.dataset.state = name; }

function say(text) { $('status').textContent = text; }

function fail(error) {
  $('error').textContent = error.message || String(error);
  setState('error');
}

// fetch with JSON errors; a 503 with Retry-After is retried a few times.
async function api(url, options = {}, kind = 'json') {
  for (let attempt = 0; ; attempt++) {
    const response = await fetch(url, options);
    if (response.ok) {
      return kind === 'blob' ? response.blob() : response.json();
    }
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && body.error) message = body.error;
    } catch (_) { /* not JSON */ }
    const retry = Number(response.headers.get('Retry-After'));
    if (response.status === 503 && retry > 0 && attempt < 5) {
      say(`Server busy: ${message}. Trying again in ${retry} s…`);
      await sleep(retry * 1000);
      continue;
    }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
}

async function checkReady() {
  try {
    const ready = await api('/readyz');
    state.classes = ready.classes;
    $('ready').textContent = `ready: ${ready.workers} model worker(s), models ${ready.models}`;
    buildLabelButtons();
    return true;
  } catch (error) {
    $('ready').textContent = `not ready: ${error.message}`;
    return false;
  }
}

async function loadExplainers() {
  const list = await api('/v1/explainers');
  state.explainers = list.explainers;
  const select = $('method');
  select.replaceChildren(...list.explainers.map((e) => {
    const option = document.createElement('option');
    option.value = e.name;
    option.textContent = e.name;
    option.title = e.summary;
    return option;
  }));
  const preferred = list.explainers.find((e) => e.name === 'grad-cam') || list.explainers[0];
  if (preferred) select.value = preferred.name;
}

function buildLabelButtons() {
  const group = $('labels');
  group.replaceChildren(...[...state.classes, 'skip'].map((label) => {
    const button = document.createElement('button');
    button.type = 'button';
    button.dataset.label = label;
    button.textContent = className(label);
    if (label === 'skip') button.className = 'secondary';
    button.addEventListener('click', () => labelImage(label));
    return button;
  }));
}

function picture(src, alt, className) {
  const img = document.createElement('img');
  img.alt = alt;
  img.src = src;
  if (className) img.className = className;
  return img;
}

function pane(...images) {
  const div = document.createElement('div');
  div.className = 'pane';
  div.append(...images);
  return div;
}

// One picture alone (the local preview while uploading).
function showPreview(src, alt) {
  $('picture').classList.add('single');
  $('picture').replaceChildren(pane(picture(src, alt)));
}

// The radiograph on the left; on the right the overlay over the same radiograph, so that the
// opacity slider fades the heatmap (the overlay keeps the radiograph's size).
function showPair(id, overlay, alt) {
  const raw = `/v1/image/${id}`;
  const over = picture(overlay, alt, 'over');
  $('picture').classList.remove('single');
  $('picture').replaceChildren(
    pane(picture(raw, 'The radiograph', 'raw')),
    pane(picture(raw, '', 'raw'), over),
  );
  applyView();
  return over;
}

// Opacity of the heatmap, and window (contrast) and level (brightness) of the radiograph.
function applyView() {
  for (const img of document.querySelectorAll('#picture img.over')) img.style.opacity = $('opacity').value;
  const filter = `contrast(${$('window').value}) brightness(${$('level').value})`;
  for (const img of document.querySelectorAll('#picture img.raw')) img.style.filter = filter;
}

async function upload(file) {
  if (!file) return;
  const request = ++state.request;
  $('error').textContent = '';
  $('result').hidden = true;
  $('review').hidden = true;
  $('review-status').textContent = '';
  $('quality').replaceChildren();
  $('caption').textContent = '';
  $('method').disabled = true;
  state.id = null;
  if (state.preview) URL.revokeObjectURL(state.preview);
  state.preview = null;
  state.entry = -1;
  renderQueue();
  if (/\.(png|jpe?g)$/i.test(file.name) || /^image\//.test(file.type)) {
    state.preview = URL.createObjectURL(file);
    showPreview(state.preview, `The radiograph ${file.name}`);
  }
  setState('uploading');
  say(`Uploading and classifying ${file.name}…`);
  const form = new FormData();
  form.append('file', file, file.name);
  try {
    const result = await api('/v1/classifier', { method: 'POST', body: form });
    if (request !== state.request) return;
    state.id = result.id;
    showResult(result, file.name);
    setState('classified');
    say(`${file.name}: image ${result.id}${result.cached ? ' (from the cache)' : ''}.`);
    $('method').disabled = false;
    $('review').hidden = false;
    await explain();
  } catch (error) {
    if (request === state.request) fail(error);
  }
}

function showResult(result, name) {
  $('result').hidden = false;
  const p = result.probabilities[result.label];
  $('label').textContent = `${className(result.label)} (${(100 * p).toFixed(1)} %)`;
  $('bars').replaceChildren(...Object.entries(result.probabilities).map(([cls, value]) => {
    const row = document.createElement('div');
    row.className = 'bar';
    const label = document.createElement('span');
    label.textContent = className(cls);
    const track = document.createElement('div');
    track.className = 'track';
    track.setAttribute('role', 'meter');
    track.setAttribute('aria-valuemin', '0');
    track.setAttribute('aria-valuemax', '1');
    track.setAttribute('aria-valuenow', String(value));
    track.setAttribute('aria-label', `Probability of ${className(cls)}`);
    const fill = document.createElement('div');
    fill.className = 'fill';
    fill.style.width = `${(100 * value).toFixed(1)}%`;
    track.append(fill);
    const number = document.createElement('span');
    number.className = 'value';
    number.textContent = value.toFixed(3);
    row.append(label, track, number);
    return row;
  }));
  const positive = state.classes[0] || 'covid';
  $('threshold').textContent =
    `Decision threshold on ${className(positive)}: ${result.threshold.toFixed(3)}. ` +
    `Lungs cover ${(100 * result.lung_fraction).toFixed(1)} % of the image (${result.width}×${result.height}).`;
  const trust = result.trust || { flags: [], reasons: [] };
  const parts = [];
  const familiarity = document.createElement('p');
  familiarity.className = 'muted';
  familiarity.textContent = trust.familiarity == null
    ? 'Familiarity: not measured for this classifier.'
    : `Familiarity distance: ${trust.familiarity.toFixed(2)} (higher is less like the training images).`;
  parts.push(familiarity);
  if (trust.flags.length === 0) {
    const ok = document.createElement('p');
    ok.className = 'trusted';
    ok.textContent = 'No trust flags: the image looks like those the model was trained on.';
    parts.push(ok);
  } else {
    const list = document.createElement('ul');
    list.className = 'flags';
    list.setAttribute('aria-label', 'Trust flags');
    trust.flags.forEach((flag, i) => {
      const item = document.createElement('li');
      const title = document.createElement('strong');
      title.textContent = FLAG_TEXT[flag] || flag;
      item.append(title, document.createTextNode(trust.reasons[i] || ''));
      list.append(item);
    });
    parts.push(list);
  }
  $('trust').replaceChildren(...parts);
}

async function explain() {
  if (!state.id) return;
  const id = state.id;
  const method = $('method').value;
  const request = ++state.request;
  delete document.body.dataset.overlay; // no explanation on screen until this one is
  setState('explaining');
  $('explain-status').textContent = `Running ${method}…`;
  $('quality').replaceChildren();
  try {
    // The report first (it computes and caches the overlay), then the overlay itself.
    const report = await api(`/v1/explainer/${encodeURIComponent(method)}/${id}?format=json`);
    const blob = await api(`/v1/explainer/${encodeURIComponent(method)}/${id}?format=png`, {}, 'blob');
    if (request !== state.request) return;
    const url = URL.createObjectURL(blob);
    const img = showPair(id, url, `The radiograph with the ${method} heatmap for ${className(report.target)}`);
    await img.decode();
    if (state.preview) URL.revokeObjectURL(state.preview);
    state.preview = url;
    $('caption').textContent =
      `${method} heatmap for ${className(report.target)}; the outline marks the lungs found by the segmenter.`;
    showQuality(report);
    $('explain-status').textContent = `${method}: ${report.cached ? 'from the cache' : `${(report.explain_ms / 1000).toFixed(1)} s`}`;
    document.body.dataset.overlay = method;
    setState('explained');
  } catch (error) {
    if (request === state.request) {
      $('explain-status').textContent = '';
      fail(error);
    }
  }
}

function showQuality(report) {
  const q = report.quality || {};
  const rows = [
    ['Heat inside the lungs', q.lung_mass_share, (v) => `${(100 * v).toFixed(0)} %`],
    ['Deletion AUC (lower is more faithful)', q.deletion_auc, (v) => v.toFixed(3)],
    ['Insertion AUC (higher is more faithful)', q.insertion_auc, (v) => v.toFixed(3)],
  ];
  const items = [];
  for (const [name, value, format] of rows) {
    if (value == null) continue;
    const dt = document.createElement('dt');
    dt.textContent = name;
    const dd = document.createElement('dd');
    dd.textContent = format(value);
    items.push(dt, dd);
  }
  $('quality').replaceChildren(...items);
}

function reviewer() {
  const name = $('reviewer').value.trim();
  if (name) localStorage.setItem('cxr-reviewer', name);
  return name;
}

async function labelImage(label) {
  if (!state.id || $('review').hidden) return;
  const buttons = [...$('labels').querySelectorAll('button')];
  buttons.forEach((b) => { b.disabled = true; });
  $('review-status').textContent = 'Saving…';
  try {
    const entry = await api('/v1/training/queue', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({
        id: state.id, label, reviewer: reviewer() || undefined,
        shown: document.body.dataset.overlay ? [document.body.dataset.overlay] : [],
      }),
    });
    state.labelled.push(entry.id);
    $('undo').disabled = false;
    $('review-status').textContent =
      `Labelled ${className(entry.review.label)} by ${entry.review.reviewer} (queue entry ${entry.id}).`;
    setState('labelled');
    // In the queue, on to the next entry, as in the viewer.
    const from = state.entry;
    await loadQueue();
    if (from >= 0) {
      const stays = state.entries.findIndex((e) => e.id === entry.id) >= 0;
      await openEntry(stays ? from + 1 : from);
    }
  } catch (error) {
    $('review-status').textContent = '';
    fail(error);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

// Takes back this page's last label (a review event of its own: the queue keeps the review,
// marked undone) and shows that entry again.
async function undo() {
  const id = state.labelled.pop();
  $('undo').disabled = state.labelled.length === 0;
  if (!id) return;
  const headers = {};
  const name = reviewer();
  if (name) headers['X-Reviewer'] = name;
  try {
    const entry = await api(`/v1/training/queue/${id}/undo`, { method: 'POST', headers });
    const now = entry.review ? className(entry.review.label) : 'waiting for review';
    await loadQueue();
    const i = state.entries.findIndex((e) => e.id === id);
    if (i >= 0) await openEntry(i);
    $('review-status').textContent = `Undid the last label of queue entry ${id}: now ${now}.`;
    setState('undone');
  } catch (error) {
    fail(error);
  }
}

async function loadQueue() {
  const filter = $('queue-filter').value;
  const query = { pending: '?pending=true', time: '?order=time' }[filter] || '';
  try {
    const queue = await api(`/v1/training/queue${query}`);
    state.entries = queue.entries;
    if (state.id) state.entry = state.entries.findIndex((e) => e.id === state.id);
    $('queue-summary').textContent =
      `Training queue: ${queue.count} entries, ${queue.reviewed} reviewed, ${queue.pending} waiting.`;
    renderQueue();
  } catch (error) {
    $('queue-summary').textContent = `Training queue: ${error.message}`;
  }
}

function renderQueue() {
  const span = (className, text) => {
    const s = document.createElement('span');
    s.className = className;
    s.textContent = text;
    return s;
  };
  $('queue-list').replaceChildren(...state.entries.map((entry, i) => {
    const button = document.createElement('button');
    button.type = 'button';
    button.dataset.id = entry.id;
    if (i === state.entry) button.setAttribute('aria-current', 'true');
    const p = entry.predicted;
    const flags = (p && p.flags) || [];
    const said = p
      ? `predicted ${className(p.label)} ${(100 * p.confidence).toFixed(0)} %` +
        (flags.length ? ` · ${flags.map((f) => FLAG_TEXT[f] || f).join(', ')}` : '')
      : 'no prediction';
    button.append(
      span('name', entry.source_name || entry.id),
      span('mark', entry.review ? `✔ ${className(entry.review.label)}` : 'waiting'),
      span(flags.length ? 'meta flagged' : 'meta', said),
    );
    button.addEventListener('click', () => openEntry(i));
    const item = document.createElement('li');
    item.append(button);
    return item;
  }));
}

// Shows queue entry `i`: its classification (from the cache, or computed again), the
// radiograph and the overlay, and its review.
async function openEntry(i) {
  const entry = state.entries[i];
  if (!entry) return;
  const request = ++state.request;
  state.entry = i;
  state.id = entry.id;
  renderQueue();
  $('error').textContent = '';
  $('quality').replaceChildren();
  $('caption').textContent = '';
  document.body.dataset.entry = entry.id;
  setState('opening');
  say(`Queue entry ${entry.source_name || entry.id}…`);
  try {
    const result = await api(`/v1/classifier/${entry.id}`);
    if (request !== state.request) return;
    showResult(result);
    setState('classified');
    say(`${entry.source_name || entry.id}: queue entry ${entry.id}.`);
    $('method').disabled = false;
    $('review').hidden = false;
    $('review-status').textContent = entry.review
      ? `Reviewed: ${className(entry.review.label)} by ${entry.review.reviewer}.`
      : 'Waiting for review.';
    await explain();
  } catch (error) {
    if (request === state.request) fail(error);
  }
}

// The viewer's keys, outside text fields and controls.
function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (['INPUT', 'SELECT', 'TEXTAREA'].includes(event.target.tagName)) return;
  const labels = { c: 'covid', n: 'normal', s: 'skip' };
  if (event.key === 'j' || event.key === 'k') {
    event.preventDefault();
    const next = state.entry + (event.key === 'j' ? 1 : -1);
    if (next >= 0 && next < state.entries.length) openEntry(next);
  } else if (labels[event.key] && [...state.classes, 'skip'].includes(labels[event.key])) {
    event.preventDefault();
    labelImage(labels[event.key]);
  } else if (event.key === 'u') {
    event.preventDefault();
    undo();
  }
}

function setUp() {
  const input = $('file');
  const drop = $('drop');
  input.addEventListener('change', () => upload(input.files[0]));
  drop.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' || event.key === ' ') {
      event.preventDefault();
      input.click();
    }
  });
  for (const name of ['dragenter', 'dragover']) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add('over'); });
  }
  for (const name of ['dragleave', 'drop']) {
    drop.addEventListener(name, () => drop.classList.remove('over'));
  }
  drop.addEventListener('drop', (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) upload(file);
  });
  $('method').addEventListener('change', explain);
  $('reviewer').value = localStorage.getItem('cxr-reviewer') || '';
  for (const id of ['opacity', 'window', 'level']) $(id).addEventListener('input', applyView);
  $('queue-filter').addEventListener('change', loadQueue);
  $('queue-refresh').addEventListener('click', loadQueue);
  $('undo').addEventListener('click', undo);
  document.addEventListener('keydown', onKey);
}

async function start() {
  setUp();
  try {
    await loadExplainers();
  } catch (error) {
    fail(error);
  }
  while (!(await checkReady())) await sleep(2000);
  await loadQueue();
}

start();
