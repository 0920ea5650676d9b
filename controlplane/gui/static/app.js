// kuma-vm GUI: reads the public API (the endpoints kumactl uses) and renders escaped strings.
// Data layer: one list request per resource kind per refresh, never one request per dataplane.
// Multi-zone: a global lists every zone (GET /zones/_overview) and holds every zone's dataplanes (synced over
// KDS, labelled with their zone); a zone control plane shows its own.
import { $, dpLink, dpsLink, esc, match, statusCell, table, tags, yaml, zoneLink } from "./ui.js";
import { ingressRows, zoneDetail, zoneIngresses, zones } from "./zones.js";

const REFRESH_MS = 5000;
const ZONE_LABEL = "kuma.io/zone";
const DISPLAY_NAME = "kuma.io/display-name"; // a zone's dataplane on global is stored as <name>-<hash>
const state = { data: null, error: null, shown: false };

class ApiError extends Error { constructor(status, msg) { super(msg); this.status = status; } }

async function api(path) {
  const token = sessionStorage.getItem("kuma-token");
  let res;
  try {
    res = await fetch(path, { headers: token ? { Authorization: "Bearer " + token } : {} });
  } catch (e) { throw new ApiError(0, "the control plane does not answer (" + e.message + ")"); }
  if (!res.ok) {
    let detail = res.statusText;
    try { const b = await res.json(); detail = b.details || b.title || detail; } catch (_) { /* not JSON */ }
    throw new ApiError(res.status, detail);
  }
  return res.json();
}

async function listAll(path) {
  const items = [];
  let url = path + (path.includes("?") ? "&" : "?") + "size=1000";
  while (url) { const page = await api(url); items.push(...page.items); url = page.next; }
  return items;
}

// Policy kinds come from the API's own description: mesh-scoped types named mesh* (MeshTrafficPermission...).
// Read once per page load: the kinds a control plane serves do not change while it runs.
let policyKinds = null;
async function kindsOf() {
  if (!policyKinds) {
    const doc = await api("/openapi.json");
    policyKinds = Object.keys(doc.paths || {}).map((p) => p.match(/^\/meshes\/\{mesh\}\/(mesh[a-z]+)$/))
      .filter(Boolean).map((m) => m[1]);
  }
  return policyKinds;
}

async function load() {
  const [index, meshes, kinds] = await Promise.all([api("/"), listAll("/meshes"), kindsOf()]);
  const perMesh = await Promise.all(meshes.map(async (m) => {
    const base = "/meshes/" + encodeURIComponent(m.name);
    const [overview, insights, ...pols] = await Promise.all([
      listAll(base + "/dataplanes/_overview"), listAll(base + "/dataplane-insights"),
      ...kinds.map((k) => listAll(base + "/" + k).catch(() => []))]);
    return { mesh: m, overview, insights, policies: pols.flat().map((p) => ({ ...p, mesh: p.mesh || m.name })) };
  }));
  const [ingresses, zones] = await Promise.all([listAll("/zoneingresses/_overview"),
    index.mode === "global" ? listAll("/zones/_overview") : []]);
  const localZone = index.mode === "global" ? "" : index.zone || "";
  const insightByKey = new Map();
  const dataplanes = [];
  for (const m of perMesh) {
    for (const i of m.insights) insightByKey.set(m.mesh.name + "/" + i.name, i);
    for (const o of m.overview) {
      const dp = o.dataplane, net = dp.networking || {};
      const inbound = net.inbound || [];
      const unhealthy = inbound.filter((i) => i.health && i.health.ready === false).length;
      const status = o.status === "offline" ? "offline" : unhealthy ? "partially healthy" : "online";
      const labels = dp.labels || {};
      // The tag sets a tag-based targetRef matches: its inbounds'; an outbound-only proxy's identity (its
      // kuma.io/workload label as kuma.io/service), as the control plane selects it.
      const workload = labels["kuma.io/workload"];
      const selectors = inbound.length || net.gateway ? inbound.map((i) => i.tags || {})
        : [workload ? { "kuma.io/service": workload } : {}];
      dataplanes.push({ mesh: o.mesh, name: o.name, display: labels[DISPLAY_NAME] || o.name, dp, status, inbound,
        selectors, outbound: net.outbound || [], zone: labels[ZONE_LABEL] || localZone,
        insight: insightByKey.get(o.mesh + "/" + o.name),
        services: [...new Set(inbound.map((i) => (i.tags || {})["kuma.io/service"]).filter(Boolean))] });
    }
  }
  return { index, meshes: perMesh.map((m) => m.mesh), policies: perMesh.flatMap((m) => m.policies), dataplanes,
    ingresses: ingressRows(ingresses, localZone), zones };
}

function services(d) {
  const by = new Map();
  for (const dp of d.dataplanes) for (const s of dp.services) {
    const key = dp.mesh + "/" + s;
    const e = by.get(key) || { mesh: dp.mesh, name: s, total: 0, online: 0, zones: new Set() };
    e.total++; if (dp.status === "online") e.online++;
    if (dp.zone) e.zones.add(dp.zone);
    by.set(key, e);
  }
  return [...by.values()];
}

// The dataplanes a policy's top-level targetRef selects (null when its kind is not one evaluated here).
function selected(d, p) {
  const ref = (p.spec || p).targetRef || { kind: "Mesh" };
  const inMesh = d.dataplanes.filter((x) => x.mesh === p.mesh);
  if (ref.kind === "Mesh") return inMesh;
  const named = (t) => t["kuma.io/service"] === ref.name;
  const tagged = (t) => Object.entries(ref.tags || {}).every(([k, v]) => t[k] === v);
  if (ref.kind === "MeshService") return inMesh.filter((x) => x.selectors.some(named));
  if (ref.kind === "MeshSubset") return inMesh.filter((x) => x.selectors.some(tagged));
  if (ref.kind === "MeshServiceSubset") return inMesh.filter((x) => x.selectors.some((t) => named(t) && tagged(t)));
  return null;
}

const card = (label, n, cls = "", href = "") => `<div class="card"><div class="n ${cls}" data-count="${esc(label)}">`
  + `${href ? `<a href="${href}">${esc(n)}</a>` : esc(n)}</div>${esc(label)}</div>`;

const pages = {
  overview(d) {
    const c = (s) => d.dataplanes.filter((x) => x.status === s).length;
    const global = d.index.mode === "global";
    const zone = global ? "global" : d.index.zone || "standalone";
    const zc = (s) => d.zones.filter((z) => z.status === s).length;
    const zoneCards = global ? `<div class="cards">${card("zones online", zc("Online"), "online", "#/zones")}`
      + `${card("zones offline", zc("Offline"), "offline", "#/zones")}</div>` : d.index.zone
      ? `<p>Link to global: <code>${esc((d.index.global || {}).state || "none")}</code></p>` : "";
    return `<h2>Overview</h2><p>Control plane version ${esc(d.index.version)}, mode ${esc(d.index.mode)}.</p>
      <section aria-labelledby="zh"><h3 id="zh">Zones</h3><p id="zone">${esc(zone)}</p>${zoneCards}</section>
      <div class="cards">${card("meshes", d.meshes.length, "", "#/meshes")}
      ${card("services", services(d).length, "", "#/services")}
      ${card("dataplanes", d.dataplanes.length, "", "#/dataplanes")}
      ${card("online", c("online"), "online", "#/dataplanes?status=online")}
      ${card("offline", c("offline"), "offline", "#/dataplanes?status=offline")}
      ${card("partially healthy", c("partially healthy"), "partial", "#/dataplanes?status=partially+healthy")}
      ${card("zone ingresses", d.ingresses.length, "", "#/zone-ingresses")}</div>`;
  },
  zones,
  meshes(d) {
    return "<h2>Meshes</h2>" + table(["Mesh", "mTLS", "Enabled backend", "CA type", "Dataplanes"], d.meshes
      .filter((m) => match(m.name, m.mtls)).map((m) => {
        const mtls = m.mtls || {}, on = mtls.enabledBackend;
        const ca = ((mtls.backends || []).find((b) => b.name === on) || {}).type;
        return `<tr><td>${esc(m.name)}</td><td>${on ? "on" : "off"}</td><td>${esc(on)}</td><td>${esc(ca)}</td>`
          + `<td>${dpsLink({ mesh: m.name }, d.dataplanes.filter((x) => x.mesh === m.name).length)}</td></tr>`;
      }));
  },
  services(d) {
    return "<h2>Services</h2>" + table(["Service", "Mesh", "Zones", "Instances", "Online"], services(d)
      .filter((s) => match(s.name, s.mesh, [...s.zones])).map((s) => `<tr><td>${dpsLink({ service: s.name,
        mesh: s.mesh }, s.name)}</td><td>${esc(s.mesh)}</td><td>${[...s.zones].sort().map((z) => zoneLink(d, z))
        .join(", ")}</td><td>${s.total}</td><td class="${s.online === s.total ? "online" : "offline"}">`
      + `${s.online}/${s.total}</td></tr>`));
  },
  dataplanes(d, params) {
    const f = Object.fromEntries(["mesh", "service", "zone", "status"].map((k) => [k, params.get(k) || ""]));
    const rows = d.dataplanes.filter((x) => (!f.mesh || x.mesh === f.mesh) && (!f.service || x.services.includes(f.service))
      && (!f.zone || x.zone === f.zone) && (!f.status || x.status === f.status) && match(x.name, x.zone, x.dp));
    const opt = (vals, cur) => ["", ...new Set(vals)].map((v) => `<option value="${esc(v)}"${v === cur ? " selected" : ""}>`
      + `${esc(v || "any")}</option>`).join("");
    const zoneNames = [...d.zones.map((z) => z.name), ...d.dataplanes.map((x) => x.zone).filter(Boolean)].sort();
    return `<h2>Dataplanes</h2><form class="filters" id="dpfilter">
      <label>Mesh <select name="mesh">${opt(d.meshes.map((m) => m.name), f.mesh)}</select></label>
      <label>Service <select name="service">${opt(services(d).map((s) => s.name).sort(), f.service)}</select></label>
      <label>Zone <select name="zone">${opt(zoneNames, f.zone)}</select></label>
      <label>Status <select name="status">${opt(["online", "offline", "partially healthy"], f.status)}</select></label>
      </form><p id="dpcount">${rows.length} dataplanes</p>` + table(["Name", "Mesh", "Zone", "Status", "Tags"],
      rows.map((x) => `<tr><td>${dpLink(x.mesh, x.name, x.display)}</td><td>${esc(x.mesh)}</td>`
        + `<td>${zoneLink(d, x.zone)}</td>${statusCell(x.status)}<td>${x.inbound.map((i) => tags(i.tags))
          .join("<br>")}</td></tr>`));
  },
  policies(d) {
    const list = d.policies.filter((p) => match(p)).map((p) => {
      const sel = selected(d, p);
      return `<section><h3>${esc(p.type)} ${esc(p.name)} <small>(mesh ${esc(p.mesh)})</small></h3>`
        + `<p>Selects ${sel === null ? "dataplanes by a rule the GUI does not evaluate" : sel.length + " dataplanes: "
        + sel.map((x) => dpLink(x.mesh, x.name, x.display)).join(", ")}</p><pre>${esc(yaml(p))}</pre></section>`;
    });
    return "<h2>Policies</h2>" + (list.join("") || "<p>No policies.</p>");
  },
  "zone-ingresses": zoneIngresses,
};

// xDS responses of the current connection. A global holds a zone's insights as a summary (KDS leaves the
// counters out, as each push would be a message to global): say where the counts are rather than show zeros.
function ackNack(d, x, last) {
  if (d.index.mode === "global" && x.zone) return `kept by zone ${x.zone} (its control plane's GUI shows them)`;
  const t = (last.status || {}).total;
  if (!t) return "none";
  return `sent ${t.responsesSent ?? 0}, ACKed ${t.responsesAcknowledged ?? 0}, NACKed ${t.responsesRejected ?? 0}`;
}

async function dataplaneDetail(d, mesh, name) {
  const x = d.dataplanes.find((y) => y.mesh === mesh && y.name === name);
  if (!x) return `<h2>Dataplane ${esc(name)}</h2><p class="error">No dataplane ${esc(name)} in mesh ${esc(mesh)}.</p>`;
  const ins = x.insight || {}, subs = ins.subscriptions || [], last = subs[subs.length - 1] || {};
  const mtls = ins.mTLS || ins.mtls || {};
  let pol = "";
  try {
    const r = await api(`/meshes/${encodeURIComponent(mesh)}/dataplanes/${encodeURIComponent(name)}/policies`);
    const rows = (r.policyTypes || []).flatMap((t) => (t.policies || []).map((p) => `<tr><td>${esc(t.type)}</td>`
      + `<td>${esc(p.name)}</td><td>${esc(p.why)}</td><td>${esc(p.precedence)}</td></tr>`));
    pol = table(["Type", "Policy", "Why", "Precedence"], rows)
      + `<details><summary>Resolved configuration</summary><pre>${esc(JSON.stringify(r, null, 2))}</pre></details>`;
  } catch (e) { pol = `<p class="error">${esc(e.message)}</p>`; }
  return `<h2>Dataplane ${esc(x.display)}</h2><dl><dt>Mesh</dt><dd>${esc(mesh)}</dd>
    <dt>Zone</dt><dd>${zoneLink(d, x.zone) || "none"}</dd><dt>Stored as</dt><dd>${esc(name)}</dd><dt>Status</dt>
    <dd class="${x.status.split(" ")[0]}" data-dp-status>${esc(x.status)}</dd>
    <dt>Certificate expiry</dt><dd>${esc(mtls.certificateExpirationTime || "none")}</dd>
    <dt>Last config push</dt><dd>${esc(last.status && last.status.lastUpdateTime || last.connectTime || "never")}</dd>
    <dt>ACK / NACK</dt><dd>${esc(ackNack(d, x, last))}</dd></dl>
    <h3>Inbound</h3>${table(["Port", "Tags"], x.inbound.map((i) => `<tr><td>${esc(i.port)}</td><td>${tags(i.tags)}</td></tr>`))}
    <h3>Outbound</h3>${table(["Port", "Tags"], x.outbound.map((o) => `<tr><td>${esc(o.port)}</td><td>${tags(o.tags)}</td></tr>`))}
    <h3>Policies that apply</h3>${pol}`;
}

// On a phone the tables stack their cells (app.css): each cell shows its column's name, from the header.
function labelCells(root) {
  for (const t of root.querySelectorAll("table")) {
    const names = [...t.querySelectorAll("thead th")].map((th) => th.textContent);
    for (const row of t.tBodies[0].rows) for (let i = 0; i < row.cells.length; i++) row.cells[i].dataset.label = names[i] || "";
  }
}

async function render() {
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const page = parts[0] || "overview";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href") === "#/" + (page === "overview" ? "" : page)) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const main = $("main");
  if (state.error) {
    const e = state.error;
    const why = e.status === 401 ? "Not signed in or the token was refused (401): " : e.status === 403
      ? "Not allowed (403): " : e.status === 0 ? "Control plane unreachable: " : `Error ${e.status}: `;
    main.innerHTML = `<p class="error" id="error" data-status="${esc(e.status)}">${esc(why + e.message)}</p>`;
    $("login").hidden = e.status !== 401;
    return;
  }
  $("login").hidden = true;
  if (!state.data) { main.innerHTML = "<p>Loading...</p>"; return; }
  if (page === "dataplanes" && parts.length === 3) main.innerHTML = await dataplaneDetail(state.data, parts[1], parts[2]);
  else if (page === "zones" && parts.length === 2) main.innerHTML = zoneDetail(state.data, parts[1]);
  else {
    const fn = pages[page];
    main.innerHTML = fn ? fn(state.data, new URLSearchParams(query || "")) : `<p class="error">No page ${esc(page)}.</p>`;
  }
  labelCells(main);
  const form = $("dpfilter");
  if (form) form.addEventListener("change", () => {
    const p = new URLSearchParams([...new FormData(form)].filter(([, v]) => v));
    location.hash = "#/dataplanes" + (p.toString() ? "?" + p : "");
  });
}

// Rendering rebuilds <main>. Keyboard focus stays on the same link or filter when the new content has it (an
// auto-refresh, a filter changed from the keyboard); else focus that was in <main> goes to <main> itself, so Tab
// continues in the new page. Focus in the header (nav, search) is never touched.
async function renderKeepingFocus() {
  const el = document.activeElement;
  const inMain = Boolean(el && el.closest("main"));
  const key = inMain ? (el.getAttribute("href") ? `a[href="${CSS.escape(el.getAttribute("href"))}"]`
    : el.name ? `[name="${CSS.escape(el.name)}"]` : null) : null;
  await render();
  const again = key && $("main").querySelector(key);
  if (again) again.focus();
  else if (inMain && !$("main").contains(document.activeElement)) $("main").focus();
}

async function refresh() {
  try { state.data = await load(); state.error = null; $("status").textContent = "Updated " + new Date().toLocaleTimeString(); }
  catch (e) { state.error = e instanceof ApiError ? e : new ApiError(-1, e.message); }
  const first = !state.shown;
  if (first) performance.mark("kuma-data"); // the first load's API calls are done (bench/bench_gui.py reads these)
  $("logout").hidden = !sessionStorage.getItem("kuma-token");
  await renderKeepingFocus();
  if (first) { state.shown = true; performance.mark("kuma-rendered"); }
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault(); sessionStorage.setItem("kuma-token", $("token").value.trim()); $("token").value = ""; refresh();
});
// The skip link moves focus to the content; followed as a link it would make "#main" the route.
document.querySelector(".skip").addEventListener("click", (ev) => { ev.preventDefault(); $("main").focus(); });
$("logout").addEventListener("click", () => { sessionStorage.removeItem("kuma-token"); refresh(); });
$("search").addEventListener("input", render);
window.addEventListener("hashchange", renderKeepingFocus);
refresh();
setInterval(refresh, REFRESH_MS);
