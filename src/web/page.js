// The garbage-collection page: polls /api/v1/status every second and the job history
// when a run starts or ends; changes go to the API with the credentials typed here.
"use strict";

const $ = (id) => document.getElementById(id);
// Relative, so the page also works behind a proxy under a path prefix.
const api = "api/v1/";
let lastJobsKey = "";
let formDirty = false;
let running = false;

function credentials() {
  const token = $("auth-token").value.trim();
  if (token) return "Bearer " + token;
  const user = $("auth-user").value;
  if (user) {
    const bytes = new TextEncoder().encode(user + ":" + $("auth-password").value);
    return "Basic " + btoa(String.fromCharCode(...bytes));
  }
  return null;
}

async function call(method, path, body) {
  const headers = { "X-Regfs-Page": "1" };
  const auth = credentials();
  if (auth) headers["Authorization"] = auth;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(api + path, {
    method, headers, cache: "no-store", credentials: "omit",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await resp.json(); } catch (_) { /* not JSON */ }
  return { status: resp.status, data };
}

function say(text, kind) {
  const m = $("message");
  m.textContent = text;
  m.className = kind || "";
}

function bytes(n) {
  if (n === undefined || n === null) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function utc(t) {
  return t ? t.replace("T", " ").replace(/\.\d+/, "").replace(/(\+00:00|Z)$/, " UTC") : "-";
}

function seconds(s) {
  return s < 60 ? s.toFixed(1) + " s" : (s / 60).toFixed(1) + " min";
}

// "1h 30m" (humantime) -> 90
function minutesOf(d) {
  let total = 0;
  for (const [, n, u] of d.matchAll(/(\d+(?:\.\d+)?)\s*(h|m|s|ms)\b/g)) {
    total += Number(n) * ({ h: 60, m: 1, s: 1 / 60, ms: 1 / 60000 }[u]);
  }
  return Math.max(1, Math.round(total));
}

function showStatus(st) {
  $("where").textContent = "regfs at " + st.mountpoint + " (store " + st.storage + ")";
  running = !!st.current_job;
  const banner = $("banner");
  if (st.banner || running) {
    banner.textContent = st.banner ||
      ("GC job " + st.current_job.id + " is starting: the registry becomes read-only for pushes");
    banner.className = st.read_only ? "banner" : "banner running";
    banner.hidden = false;
  } else {
    banner.hidden = true;
    banner.textContent = "";
  }
  $("state-text").textContent = running
    ? "GC job " + st.current_job.id + " (" + st.current_job.trigger + "): " + st.state
    : "Idle; pushes and pulls work." + (st.last_job ? " Last run: job " + st.last_job.id + ", " + st.last_job.outcome + "." : "");
  const p = st.progress;
  $("progress-box").hidden = !running;
  if (running && st.state === "closing") {
    $("progress").removeAttribute("value");
    $("progress-text").textContent = "closing the store: in-place writers may finish (drain timeout " + st.current_job.settings.drain_timeout + ")";
  } else if (running && p) {
    $("progress").max = Math.max(1, p.total);
    $("progress").value = p.done;
    $("progress-text").textContent = p.phase + " " + p.done + " / " + p.total;
  } else if (running) {
    $("progress").removeAttribute("value");
    $("progress-text").textContent = st.state;
  }
  $("next-run").textContent = st.next_run
    ? "Next scheduled run: " + utc(st.next_run)
    : (st.schedule ? "No run scheduled." : "No schedule: runs start only when started here, by `regfs gc` or SIGUSR1.");
  $("stop").disabled = !running;
  const o = st.settings_overrides;
  $("overrides").textContent = o
    ? "Saved here by " + o.set_by + " at " + utc(o.set_at) + ": " + o.fields.join(", ") + (o.fields.length === 1 ? " overrides" : " override") + " the configuration file."
    : "These are the configuration file's settings.";
  $("revert").hidden = !o;
  const key = (st.current_job ? st.current_job.id + st.state : "") + "/" + (st.last_job ? st.last_job.id : "");
  if (key !== lastJobsKey) {
    lastJobsKey = key;
    loadJobs();
    previewRetention(); // a run may have pruned (or pushes come) since
  }
}

function fillForm(s) {
  const d = s.duration;
  if (d === "until-done" || d === "never") {
    $("duration-" + d).checked = true;
  } else {
    $("duration-limit").checked = true;
    $("limit-minutes").value = minutesOf(d);
  }
  $("schedule").value = s.schedule || "";
  $("mode").value = s.mode;
  $("delete-untagged").checked = s.delete_untagged;
  $("dry-run").checked = s.dry_run;
  $("min-age").value = s.min_age;
  formDirty = false;
  previewSchedule();
}

function formSettings() {
  const choice = document.querySelector("input[name=duration]:checked");
  let duration = choice ? choice.value : "until-done";
  if (duration === "limit") duration = Math.max(1, Number($("limit-minutes").value) || 1) + "m";
  return {
    mode: $("mode").value,
    duration,
    schedule: $("schedule").value.trim(),
    delete_untagged: $("delete-untagged").checked,
    dry_run: $("dry-run").checked,
    min_age: $("min-age").value.trim() || "1h",
  };
}

let previewTimer = null;
let previewSeq = 0;
async function previewSchedule() {
  const expr = $("schedule").value.trim();
  const seq = ++previewSeq;
  const r = await call("GET", "schedule?count=5&expr=" + encodeURIComponent(expr));
  if (seq !== previewSeq) return; // typed on meanwhile
  const list = $("next-runs");
  list.replaceChildren();
  $("schedule").classList.toggle("bad", r.status !== 200);
  if (r.status !== 200) {
    $("schedule-check").textContent = r.data ? r.data.error : "cannot check the schedule";
    return;
  }
  $("schedule-check").textContent = r.data.next.length ? "Next five runs (UTC):" : r.data.note;
  for (const t of r.data.next) {
    const li = document.createElement("li");
    li.textContent = utc(t);
    list.appendChild(li);
  }
}

async function loadSettings() {
  const r = await call("GET", "settings");
  if (r.status !== 200) return;
  if (!formDirty) fillForm(r.data.settings);
  if (!retentionDirty) fillRetention(r.data.settings.retention);
}

// Tag retention: the policy editor. Its draft is previewed as it is typed (POST
// retention/preview: what saving it would decide for the tags in the store now), and
// saved on its own ("retention" of PUT settings).
let retentionDirty = false;
const POLICY_FIELDS = [
  ["repositories", "Repositories (globs, comma-separated; ** crosses /)", "text"],
  ["keep_tags", "Always keep tags matching (regexes, one a line)", "lines"],
  ["keep_most_recently_pushed", "Keep the N most recently pushed", "number"],
  ["keep_most_recently_pulled", "Keep the N most recently pulled", "number"],
  ["keep_pushed_within", "Keep those pushed within (e.g. 30d)", "text"],
  ["keep_pulled_within", "Keep those pulled within (e.g. 7d)", "text"],
];

function addPolicy(p) {
  const box = $("policies");
  const i = box.children.length;
  const fs = document.createElement("fieldset");
  fs.className = "policy";
  const legend = document.createElement("legend");
  legend.textContent = "Policy " + i;
  fs.appendChild(legend);
  for (const [key, text, kind] of POLICY_FIELDS) {
    const id = "policy-" + i + "-" + key;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = text;
    const input = document.createElement(kind === "lines" ? "textarea" : "input");
    if (kind === "lines") input.rows = 2;
    else input.type = kind;
    if (kind === "number") { input.min = "0"; input.className = "short"; }
    input.id = id;
    input.dataset.key = key;
    input.spellcheck = false;
    const v = p ? p[key] : undefined;
    if (v !== undefined && v !== null) {
      input.value = Array.isArray(v) ? v.join(kind === "lines" ? "\n" : ", ") : String(v);
    }
    fs.append(label, input);
  }
  const remove = document.createElement("button");
  remove.type = "button";
  remove.id = "policy-" + i + "-remove";
  remove.textContent = "Remove policy " + i;
  remove.addEventListener("click", () => {
    const kept = retentionDraft().policy.filter((_, j) => j !== i);
    fillPolicies(kept);
    retentionEdited();
  });
  fs.appendChild(remove);
  box.appendChild(fs);
}

function fillPolicies(policies) {
  $("policies").replaceChildren();
  for (const p of policies || []) addPolicy(p);
}

function fillRetention(r) {
  if (!r) return;
  $("retention-dry-run").checked = r.dry_run !== false;
  $("retention-grace").value = r.grace || "";
  fillPolicies(r.policy);
  retentionDirty = false;
  previewRetention();
}

// The editor's values as the API takes them (empty fields left out).
function retentionDraft() {
  const policy = [];
  for (const fs of $("policies").children) {
    const p = {};
    for (const input of fs.querySelectorAll("[data-key]")) {
      const key = input.dataset.key, v = input.value.trim();
      if (!v) continue;
      if (key === "repositories") p[key] = v.split(",").map((x) => x.trim()).filter((x) => x);
      else if (key === "keep_tags") p[key] = v.split("\n").map((x) => x.trim()).filter((x) => x);
      else if (input.type === "number") p[key] = Number(v);
      else p[key] = v;
    }
    policy.push(p);
  }
  const draft = { dry_run: $("retention-dry-run").checked, policy };
  const grace = $("retention-grace").value.trim();
  if (grace) draft.grace = grace;
  return draft;
}

// "retention.policy[1].keep_tags[0]: ..." -> the input policy-1-keep_tags (or grace).
function markBad(error) {
  for (const e of document.querySelectorAll("#retention .bad")) e.classList.remove("bad");
  const m = /^retention\.(?:policy\[(\d+)\]\.(\w+)|(grace))/.exec(error || "");
  if (!m) return;
  const input = m[3] ? $("retention-grace") : $("policy-" + m[1] + "-" + m[2]);
  if (input) input.classList.add("bad");
}

let retentionTimer = null;
let retentionSeq = 0;
async function previewRetention() {
  const seq = ++retentionSeq;
  const r = await call("POST", "retention/preview", retentionDraft());
  if (seq !== retentionSeq) return; // typed on meanwhile
  const check = $("retention-check");
  const body = $("retention-going");
  body.replaceChildren();
  if (r.status !== 200) {
    const why = r.data ? r.data.error : "HTTP " + r.status;
    check.textContent = why;
    check.className = "error";
    markBad(why);
    return;
  }
  markBad(null);
  const going = r.data.filter((v) => !v.keep);
  check.className = "muted";
  check.textContent = going.length + " of " + r.data.length + " tags would be pruned" +
    ($("retention-dry-run").checked ? " (dry run: listed, not pruned)." : ".");
  for (const v of going) {
    const tr = document.createElement("tr");
    for (const text of [v.repository + ":" + v.tag, utc(v.pushed), v.pulled ? utc(v.pulled) : "never", v.reason]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

function retentionEdited() {
  retentionDirty = true;
  clearTimeout(retentionTimer);
  retentionTimer = setTimeout(previewRetention, 250);
}

async function saveRetention() {
  const m = $("retention-message");
  m.textContent = "Saving...";
  m.className = "";
  const r = await call("PUT", "settings", { retention: retentionDraft() });
  if (r.status === 200) {
    m.textContent = "Saved; the next run prunes by these policies.";
    m.className = "ok";
    fillRetention(r.data.settings.retention);
  } else {
    m.textContent = refusal(r);
    m.className = "error";
    markBad(m.textContent);
  }
  poll();
}

// A run's pruned tags, for its row in the history.
function prunedCell(j) {
  const td = document.createElement("td");
  const pruned = j.retention ? j.retention.pruned : [];
  if (!pruned.length) { td.textContent = j.retention ? "0" : "-"; return td; }
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = pruned.length + (j.retention.dry_run ? " (dry run)" : "");
  const list = document.createElement("ul");
  for (const p of pruned) {
    const li = document.createElement("li");
    li.textContent = p.repository + ":" + p.tag + " " + p.digest.slice(0, 19) +
      " pushed " + utc(p.pushed) + ", pulled " + (p.pulled ? utc(p.pulled) : "never");
    list.appendChild(li);
  }
  details.append(summary, list);
  td.appendChild(details);
  return td;
}


function refusal(r) {
  const why = r.data && r.data.error ? r.data.error : "HTTP " + r.status;
  if (r.status === 401) $("signin").open = true;
  return why;
}

async function save(start) {
  say(start ? "Saving and starting..." : "Saving...");
  const r = start ? await call("POST", "gc", formSettings()) : await call("PUT", "settings", formSettings());
  if (r.status === 200 || r.status === 202) {
    say(start ? "Saved; GC job " + r.data.job_id + " started." : "Saved.", "ok");
    formDirty = false;
    await loadSettings();
  } else {
    say(refusal(r), "error");
  }
  poll();
}

async function stop() {
  const r = await call("POST", "gc/stop");
  say(r.status === 202 ? r.data.message : refusal(r), r.status === 202 ? "ok" : "error");
  poll();
}

async function revert() {
  const r = await call("DELETE", "settings");
  if (r.status === 200) {
    say("The configuration file's settings are in force.", "ok");
    fillForm(r.data.settings);
    fillRetention(r.data.settings.retention);
  }
  else say(refusal(r), "error");
  poll();
}

function deleted(j) {
  const c = j.report || {};
  const blobs = c.blobs_deleted || 0, manifests = c.manifests_removed || 0;
  return blobs + " blobs, " + manifests + " manifests";
}

// The history is paged: JOBS_PAGE runs at a time, newest first; jobsOffset runs skipped.
const JOBS_PAGE = 50;
let jobsOffset = 0;

async function loadJobs() {
  const r = await call("GET", "jobs?limit=" + JOBS_PAGE + "&offset=" + jobsOffset);
  if (r.status !== 200) return;
  const total = r.data.total, shown = r.data.jobs.length;
  $("jobs-range").textContent = total ? (jobsOffset + 1) + "–" + (jobsOffset + shown) + " of " + total : "";
  $("jobs-newer").disabled = jobsOffset === 0;
  $("jobs-older").disabled = jobsOffset + shown >= total;
  const body = $("jobs");
  body.replaceChildren();
  for (const j of r.data.jobs) {
    const tr = document.createElement("tr");
    tr.dataset.jobId = j.id;
    const cells = [j.id, utc(j.started_at), j.trigger, j.outcome + (j.settings.dry_run ? " (dry run)" : ""),
      deleted(j), bytes(j.report ? j.report.bytes_freed : 0),
      j.settings.mode === "online" ? "online, paused " + Math.round(j.pause_seconds * 1000) + " ms"
        : seconds(j.read_only_seconds),
      String(j.refused_writes || 0)];
    cells.forEach((v, i) => {
      const td = document.createElement("td");
      td.textContent = v;
      if (i === 3) td.className = "outcome-" + j.outcome;
      if (i >= 5) td.className = "num";
      if (i === 3 && j.error) td.title = j.error;
      tr.appendChild(td);
    });
    tr.appendChild(prunedCell(j));
    body.appendChild(tr);
  }
  chart(r.data.jobs.filter((j) => j.outcome !== "running").reverse());
}

const SVG = "http://www.w3.org/2000/svg";
function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// Bars: bytes freed per run (left scale); line: the store's own size after each run, the
// blob bytes its mark counted less what it deleted (right scale); not the filesystem's.
function chart(jobs) {
  const box = $("chart");
  box.replaceChildren();
  const W = 720, H = 200, L = 70, R = 70, T = 18, B = 24;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  svg.appendChild(el("title", {}, "Bytes freed (bars) and store size (line) per run"));
  if (!jobs.length) {
    svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "No runs yet"));
    box.appendChild(svg);
    return;
  }
  const freed = jobs.map((j) => (j.report ? j.report.bytes_freed || 0 : 0));
  const store = jobs.map((j) => j.store_bytes);
  const maxF = Math.max(1, ...freed), maxS = Math.max(1, ...store.filter((v) => v != null));
  const step = (W - L - R) / jobs.length, y0 = H - B, h = H - T - B;
  svg.appendChild(el("line", { x1: L, y1: y0, x2: W - R, y2: y0, class: "axis" }));
  svg.appendChild(el("text", { x: L - 4, y: T, "text-anchor": "end" }, bytes(maxF)));
  svg.appendChild(el("text", { x: L - 4, y: T + 12, "text-anchor": "end" }, "freed"));
  svg.appendChild(el("text", { x: W - R + 4, y: T }, bytes(maxS)));
  svg.appendChild(el("text", { x: W - R + 4, y: T + 12 }, "store"));
  const points = [];
  jobs.forEach((j, i) => {
    const x = L + i * step;
    const bh = (freed[i] / maxF) * h;
    const bw = Math.min(step * 0.7, 48);
    const bar = el("rect", { x: x + (step - bw) / 2, y: y0 - bh, width: bw, height: bh, class: "freed" });
    bar.appendChild(el("title", {}, "job " + j.id + ": " + bytes(freed[i]) + " freed"));
    svg.appendChild(bar);
    if (jobs.length <= 30 || i % Math.ceil(jobs.length / 30) === 0) {
      svg.appendChild(el("text", { x: x + step / 2, y: H - 8, "text-anchor": "middle" }, String(j.id)));
    }
    if (store[i] != null) {
      const p = [x + step / 2, y0 - (store[i] / maxS) * h];
      points.push(p.join(","));
      const dot = el("circle", { cx: p[0], cy: p[1], r: 3, class: "store-dot" });
      dot.appendChild(el("title", {}, "job " + j.id + ": " + bytes(store[i]) + " of blobs in the store after it"));
      svg.appendChild(dot);
    }
  });
  if (points.length > 1) svg.appendChild(el("polyline", { points: points.join(" "), class: "store" }));
  box.appendChild(svg);
}

async function poll() {
  try {
    const r = await call("GET", "status");
    if (r.status === 200) showStatus(r.data);
  } catch (e) {
    $("where").textContent = "cannot reach the daemon: " + e;
  }
}

$("schedule").addEventListener("input", () => {
  formDirty = true;
  clearTimeout(previewTimer);
  previewTimer = setTimeout(previewSchedule, 200);
});
$("settings").addEventListener("change", () => { formDirty = true; });
$("retention").addEventListener("input", retentionEdited);
$("policy-add").addEventListener("click", () => { addPolicy(null); retentionEdited(); });
$("retention-save").addEventListener("click", saveRetention);
$("save").addEventListener("click", () => save(false));
$("jobs-newer").addEventListener("click", () => { jobsOffset = Math.max(0, jobsOffset - JOBS_PAGE); loadJobs(); });
$("jobs-older").addEventListener("click", () => { jobsOffset += JOBS_PAGE; loadJobs(); });
$("save-start").addEventListener("click", () => save(true));
$("stop").addEventListener("click", stop);
$("revert").addEventListener("click", revert);
loadSettings();
poll();
setInterval(poll, 1000);
setInterval(() => { if (!formDirty || !retentionDirty) loadSettings(); }, 15000);
