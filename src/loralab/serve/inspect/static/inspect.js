// loralab inspector: a thin view over /inspect/api/* (every number comes from the server).
"use strict";
const $ = (id) => document.getElementById(id);
const S = { field: null, pos: null, detail: null, prompt: "", continuation: "", chat: true, timer: null,
            inflight: 0, seq: 0, ctrl: null };

function showError(msg) { const e = $("error"); e.textContent = msg; e.hidden = !msg; }

async function api(path, body, signal) {
  const opt = body === undefined ? {} : { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
  if (signal) opt.signal = signal;
  const r = await fetch("api/" + path, opt);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    const d = data && (data.detail ?? (data.error && data.error.message));  // ours, or the server's error shape
    throw new Error(typeof d === "string" ? d : (d ? JSON.stringify(d) : `HTTP ${r.status}`));
  }
  return data;
}

const fmtP = (p) => (p >= 0.001 ? p.toFixed(4) : p.toExponential(2));

// the indicator stays while any request is in flight (two overlapping requests: until both end)
function busy(on) {
  S.inflight = Math.max(0, S.inflight + (on ? 1 : -1));
  $("busy").hidden = S.inflight === 0;
}
const aborted = (e) => e && e.name === "AbortError";

function weights() {
  const w = {};
  document.querySelectorAll("#adapter-list .adapter").forEach((row) => {
    if (row.querySelector("input[type=checkbox]").checked) w[row.dataset.name] = parseFloat(row.querySelector("input[type=range]").value);
  });
  return w;
}

function addAdapterRow(name, checked) {
  if (document.querySelector(`.adapter[data-name="${CSS.escape(name)}"]`)) {
    if (checked) document.querySelector(`.adapter[data-name="${CSS.escape(name)}"] input[type=checkbox]`).checked = true;
    return;
  }
  const row = document.createElement("div");
  row.className = "adapter"; row.dataset.name = name;
  row.innerHTML = `<input type="checkbox"><span class="name"></span>
    <input type="range" min="0" max="2" step="0.05" value="1" aria-label="strength"><span class="val">1.00</span>`;
  row.querySelector(".name").textContent = name;
  const cb = row.querySelector("input[type=checkbox]"), sl = row.querySelector("input[type=range]");
  cb.checked = !!checked;
  sl.addEventListener("input", () => { row.querySelector(".val").textContent = parseFloat(sl.value).toFixed(2); schedule(); });
  cb.addEventListener("change", schedule);
  $("adapter-list").appendChild(row);
}

function schedule() {  // recompute live, a moment after the last change
  if (!S.field) return;
  clearTimeout(S.timer);
  S.timer = setTimeout(() => refresh(true), 250);
}

async function init() {
  try {
    const st = await api("state");
    $("model").textContent = `base: ${st.model}`;
    const names = Object.keys(st.adapters);
    names.forEach((n, i) => addAdapterRow(n, i === 0));
    if (!names.length) $("adapter-list").textContent = "no adapters: the field shows the base alone";
    const q = new URLSearchParams(location.search);
    if (q.get("load")) {
      const r = await api("adapters", q.get("name") ? { path: q.get("load"), name: q.get("name") } : { path: q.get("load") });
      document.querySelectorAll(".adapter input[type=checkbox]").forEach((c) => (c.checked = false));
      addAdapterRow(r.name, true);
    }
    if (q.get("adapter")) addAdapterRow(q.get("adapter"), true);
    if (q.get("prompt")) $("prompt").value = q.get("prompt");
  } catch (e) { showError(e.message); }
}

// ---------------------------------------------------------------- field
const SCALES = {
  kl: { label: "KL(base ‖ adapter), nats", diverging: false, rgb: [215, 48, 39] },
  surprisal: { label: "surprisal −log p (adapter), nats", diverging: false, rgb: [230, 120, 0] },
  logprob_diff: { label: "log p(adapter) − log p(base), nats", diverging: true },
};

function colourOf(metric, v, hi) {
  const s = SCALES[metric], t = hi > 0 ? Math.min(Math.abs(v) / hi, 1) : 0;
  const mix = (c) => Math.round(255 - (255 - c) * t);
  if (!s.diverging) return `rgb(${mix(s.rgb[0])},${mix(s.rgb[1])},${mix(s.rgb[2])})`;
  const c = v >= 0 ? [26, 152, 80] : [69, 117, 180];  // green: adapter more likely; blue: less
  return `rgb(${mix(c[0])},${mix(c[1])},${mix(c[2])})`;
}

function renderField() {
  const f = S.field, metric = $("colour").value, vals = f[metric];
  const hi = Math.max(1e-9, ...vals.map(Math.abs));
  const s = SCALES[metric];
  $("legend").innerHTML = "";
  const lo = document.createElement("span"), bar = document.createElement("span"), up = document.createElement("span");
  lo.textContent = s.diverging ? (-hi).toFixed(3) : "0"; up.textContent = hi.toFixed(3);
  bar.className = "bar";
  bar.style.background = s.diverging
    ? `linear-gradient(to right, ${colourOf(metric, -hi, hi)}, #fff, ${colourOf(metric, hi, hi)})`
    : `linear-gradient(to right, #fff, ${colourOf(metric, hi, hi)})`;
  const name = document.createElement("span"); name.textContent = s.label;
  $("legend").append(name, lo, bar, up);
  const box = $("field"); box.innerHTML = "";
  f.tokens.forEach((t, i) => {
    const sp = document.createElement("span");
    sp.className = "tok" + (i === S.pos ? " sel" : ""); sp.dataset.i = i;
    sp.textContent = t;
    sp.style.background = colourOf(metric, vals[i], hi);
    sp.title = `#${i} ${JSON.stringify(t)}  KL ${f.kl[i].toFixed(4)}  surprisal ${f.surprisal[i].toFixed(3)} (base ${f.base_surprisal[i].toFixed(3)})  Δlog p ${f.logprob_diff[i].toFixed(3)}`;
    sp.addEventListener("click", () => selectPos(i));
    box.appendChild(sp);
  });
  const T = f.totals, P = f.precision || {};
  $("totals").textContent = `${f.tokens.length} tokens · NLL base ${T.base_nll.toFixed(3)} · adapter ${T.adapter_nll.toFixed(3)} · mean KL ${T.kl_mean.toFixed(4)} · max KL ${T.kl_max.toFixed(4)}`
    + (P.dtype ? ` · computed in ${P.dtype} on ${P.device}` : "");
  const ol = $("worst-list"); ol.innerHTML = "";
  f.disagree.forEach((i) => {
    const li = document.createElement("li"), a = document.createElement("a");
    a.href = "#"; a.textContent = JSON.stringify(f.tokens[i]) + ` at #${i}`;
    a.addEventListener("click", (ev) => { ev.preventDefault(); selectPos(i); });
    li.append(a, ` KL ${f.kl[i].toFixed(4)}`);
    ol.appendChild(li);
  });
  $("field-section").hidden = false;
}

function request() {
  return { prompt: S.prompt, chat: S.chat, adapters: weights() };
}

async function run() {
  showError("");
  S.prompt = $("prompt").value; S.chat = document.querySelector("input[name=mode]:checked").value === "chat";
  S.pos = null; $("position-section").hidden = true;
  busy(true);
  try {
    const f = await api("field", { ...request(), continuation: $("continuation").value, seed: +$("seed").value });
    S.field = f; S.continuation = f.continuation;
    if (f.generated) $("continuation").value = f.continuation;
    renderField();
  } catch (e) { showError(e.message); }
  busy(false);
}

async function refresh(live) {  // a newer slider move cancels this one's requests
  if (S.ctrl) S.ctrl.abort();
  const ctrl = new AbortController(), seq = ++S.seq;
  S.ctrl = ctrl;
  busy(true);
  try {
    const f = await api("field", { ...request(), continuation: S.continuation }, ctrl.signal);
    if (seq !== S.seq) return;
    S.field = f; renderField();
    if (S.pos !== null) await loadPos(ctrl.signal, seq);
    if (live) showError("");
  } catch (e) { if (!aborted(e)) showError(e.message); }
  finally { busy(false); }
}

// ---------------------------------------------------------------- one position
async function selectPos(i) {
  S.pos = i;
  document.querySelectorAll(".tok").forEach((t) => t.classList.toggle("sel", +t.dataset.i === i));
  busy(true);
  try { await loadPos(); showError(""); } catch (e) { showError(e.message); }
  busy(false);
}

async function loadPos(signal, seq) {
  const body = { ...request(), continuation: S.continuation, position: S.pos, k: 10 };
  if ($("bias").checked) body.bias_dataset = $("dataset").value;
  const d = await api("position", body, signal);
  if (seq !== undefined && seq !== S.seq) return;
  S.detail = d;
  $("pos-label").textContent = `#${d.position}: ${JSON.stringify(d.actual)} after ${JSON.stringify(d.prefix_text.slice(-40))}`;
  const box = $("dists"); box.innerHTML = "";
  const pmax = Math.max(...d.sides.map((s) => Math.exp(s.top_logprobs[0])));  // bars share one scale
  d.sides.forEach((s) => {
    const col = document.createElement("div");
    col.className = "dist " + (s.name === "base" ? "base" : "lora"); col.dataset.side = s.name;
    const h = document.createElement("h4");
    const w = S.field.weights[s.name];
    h.textContent = s.name + (w !== undefined ? ` × ${w.toFixed(2)}` : "");
    col.appendChild(h);
    s.top_ids.forEach((id, j) => {
      const p = Math.exp(s.top_logprobs[j]);
      const row = document.createElement("div");
      row.className = "bar-row" + (id === d.actual_id ? " actual" : ""); row.dataset.id = id;
      row.innerHTML = `<span class="lab"></span><span class="b"></span><span class="p"></span>`;
      row.querySelector(".lab").textContent = JSON.stringify(s.top_tokens[j]);
      row.querySelector(".b").style.width = Math.max(1, Math.round(160 * p / pmax)) + "px";
      row.querySelector(".p").textContent = fmtP(p);
      row.title = `log p ${s.top_logprobs[j].toFixed(5)}`;
      row.addEventListener("click", () => { $("chosen").value = s.top_tokens[j]; $("rest").value = ""; });
      col.appendChild(row);
    });
    box.appendChild(col);
  });
  const ol = $("pos-disagree"); ol.innerHTML = "";
  d.disagree.forEach((t) => {
    const li = document.createElement("li");
    const probs = d.sides.map((s) => `${s.name} ${fmtP(Math.exp(s.logprobs[d.candidates.indexOf(t.id)]))}`).join(" · ");
    li.textContent = `${JSON.stringify(t.token)}: ${probs}`;
    ol.appendChild(li);
  });
  $("position-section").hidden = false;
}

async function save() {
  showError("");
  const d = S.detail;
  if (!d) { showError("click a token first"); return; }
  try {
    const r = await api("corrections", {
      dataset: $("dataset").value,
      correction: { prompt: S.prompt, chat: S.chat, prefix: d.prefix_text, chosen: $("chosen").value, rest: $("rest").value,
                    rejected: d.rest_text, replaced_id: d.actual_id, position: d.position, adapters: weights() },
    });
    await listSaved();
    $("saved").textContent = r.quarantine_reason
      ? `not used (${r.quarantine_reason}); kept in ${r.dataset}/quarantine.jsonl`
      : `saved record ${r.record_id} to ${r.dataset}/records.jsonl (${r.records} records, ${r.preferences} preference pairs, ${r.quarantined} quarantined)`;
  } catch (e) { showError(e.message); }
}

async function continueHere() {  // the mix writes the rest of the answer after the corrected prefix
  showError("");
  const d = S.detail;
  if (!d) { showError("click a token first"); return; }
  busy(true);
  try {
    const r = await api("continue", { prompt: S.prompt, chat: S.chat, adapters: weights(),
                                      prefix: d.prefix_text + $("chosen").value, max_new_tokens: +$("max-new").value });
    $("rest").value = r.rest;
  } catch (e) { showError(e.message); }
  busy(false);
}

async function listSaved() {
  const ol = $("saved-list");
  try {
    const r = await api("corrections/" + encodeURIComponent($("dataset").value));
    ol.innerHTML = "";
    r.corrections.forEach((c) => {
      const li = document.createElement("li");
      li.textContent = `${JSON.stringify(c.prompt)} → ${JSON.stringify(c.answer)}` +
        (c.quarantine_reason ? ` (not used: ${c.quarantine_reason})` : ` (record ${c.record_id})`);
      ol.appendChild(li);
    });
  } catch (e) { showError(e.message); }
}

async function undo() {
  showError("");
  try {
    const r = await api("corrections/undo", { dataset: $("dataset").value });
    $("saved").textContent = `removed the last correction; ${r.dataset}: ${r.records} records, ${r.preferences} preference pairs, ${r.quarantined} quarantined`;
    await listSaved();
  } catch (e) { showError(e.message); }
}

async function generate() {
  showError("");
  const body = { prompt: $("prompt").value, chat: document.querySelector("input[name=mode]:checked").value === "chat",
                 adapters: weights(), seed: +$("seed").value, temperature: +$("temperature").value,
                 max_new_tokens: +$("max-new").value };
  if ($("bias").checked) body.bias_dataset = $("dataset").value;
  busy(true);
  try {
    const g = await api("generate", body);
    const box = $("gens"); box.innerHTML = "";
    Object.entries(g.generations).forEach(([name, x]) => {
      const div = document.createElement("div"), h = document.createElement("h4"), t = document.createElement("div");
      div.className = "gen"; div.dataset.side = name;
      h.textContent = { base: "base", adapter: "adapter mix", bias: "adapter mix + logit bias" }[name] + ` (seed ${g.seed})`;
      t.textContent = x.text;
      div.append(h, t); box.appendChild(div);
    });
  } catch (e) { showError(e.message); }
  busy(false);
}

// ---------------------------------------------------------------- export
const COLUMNS = ["ids", "tokens", "base_logprob", "adapter_logprob", "logprob_diff", "base_surprisal", "surprisal", "kl", "js"];

function tokenRows() {
  const f = S.field;
  return f.tokens.map((_, i) => Object.fromEntries([["position", i], ...COLUMNS.map((c) => [c === "ids" ? "id" : c === "tokens" ? "token" : c, f[c][i]])]));
}

function download(name, text, type) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = name;
  document.body.appendChild(a); a.click(); a.remove();
}

function exportTable(kind) {
  if (!S.field) { showError("inspect a continuation first"); return; }
  const rows = tokenRows();
  if (kind === "json") {
    download("token-field.json", JSON.stringify({ prompt: S.prompt, continuation: S.continuation, weights: S.field.weights,
                                                  precision: S.field.precision, tokens: rows }, null, 1), "application/json");
    return;
  }
  const head = Object.keys(rows[0]);
  const cell = (v) => (typeof v === "string" ? `"${v.replace(/"/g, '""')}"` : String(v));
  download("token-field.csv", [head.join(","), ...rows.map((r) => head.map((h) => cell(r[h])).join(","))].join("\n") + "\n", "text/csv");
}

$("export-csv").addEventListener("click", () => exportTable("csv"));
$("export-json").addEventListener("click", () => exportTable("json"));
// ---------------------------------------------------------------- dataset view
async function rankDataset() {
  showError("");
  busy(true);
  try {
    const path = $("ds-path").value || $("dataset").value;
    const r = await api("dataset", { path, adapters: weights(), limit: +$("ds-limit").value });
    const sk = r.skipped;
    $("ds-summary").textContent = `${r.path}: ${r.read} read, ${r.ranked} ranked (${sk.no_answer} without an answer, ${sk.too_long} too long), `
      + `mean KL(base ‖ mix) per answer token, computed in ${r.precision.dtype}`;
    const t = $("ds-table");
    t.innerHTML = "<tr><th>#</th><th>mean KL</th><th>max KL</th><th>Δ log p / token</th><th>tokens</th><th>prompt</th><th></th></tr>";
    r.rows.forEach((x, i) => {
      const tr = document.createElement("tr");
      tr.className = "ds-row"; tr.dataset.id = x.id;
      [i + 1, x.mean_kl.toFixed(4), x.max_kl.toFixed(4), x.delta_logprob.toFixed(3), x.tokens, x.prompt.slice(0, 80)].forEach((v) => {
        const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
      });
      const td = document.createElement("td"), b = document.createElement("button");
      b.type = "button"; b.textContent = "inspect"; b.className = "ds-inspect";
      b.addEventListener("click", () => {  // one click into the token view
        $("prompt").value = x.prompt; $("continuation").value = x.continuation;
        document.querySelector(`input[name=mode][value=${x.chat ? "chat" : "raw"}]`).checked = true;
        run().then(() => $("field-section").scrollIntoView());
      });
      td.appendChild(b); tr.appendChild(td); t.appendChild(tr);
    });
  } catch (e) { showError(e.message); }
  busy(false);
}

$("ds-run").addEventListener("click", rankDataset);
$("run").addEventListener("click", run);
$("continue").addEventListener("click", continueHere);
$("undo").addEventListener("click", undo);
$("dataset").addEventListener("change", listSaved);
$("colour").addEventListener("change", () => S.field && renderField());
$("save").addEventListener("click", save);
$("generate").addEventListener("click", generate);
init();
