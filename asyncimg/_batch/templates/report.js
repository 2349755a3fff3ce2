"use strict";
// The cards travel in chunks of CHUNK: the first in this page, the others in
// .report/BUILD-K.js, each a script calling asyncimgChunk (works from file://). The
// unfiltered gallery loads the chunks its page needs; a filter or a search loads them all.
const grid = document.getElementById("gallery");
const pager = document.getElementById("pager");
const PAGE = Number(grid.dataset.pageSize), TOTAL = Number(grid.dataset.total);
const CHUNK = Number(grid.dataset.chunk), CHUNKS = Number(grid.dataset.chunks);
const BUILD = grid.dataset.build;
const chunks = [JSON.parse(document.getElementById("items").textContent)];
const loading = new Map();
let shown = null, page = 0, status = "all", query = "", ticket = 0;
window.asyncimgChunk = (build, k, items) => {
  if (build === BUILD && Number.isInteger(k) && k > 0 && k < CHUNKS && Array.isArray(items))
    chunks[k] = items;
};
function load(k) {
  if (chunks[k]) return Promise.resolve();
  if (!loading.has(k)) loading.set(k, new Promise((resolve, reject) => {
    const s = document.createElement("script");
    s.src = ".report/" + BUILD + "-" + k + ".js";
    s.onload = s.onerror = () => {
      s.remove();
      loading.delete(k);
      if (chunks[k]) resolve(); else reject(new Error(s.src));
    };
    document.head.append(s);
  }));
  return loading.get(k);
}
function missing(from, to) {
  const ks = [];
  for (let k = Math.floor(from / CHUNK); k * CHUNK < to; k++) if (!chunks[k]) ks.push(k);
  return ks;
}
function loadThen(ks, then) {
  const mine = ++ticket;
  let got = 0;
  pager.textContent = "loading the items\u2026";
  Promise.all(ks.map(k => load(k).then(() => {
    if (mine === ticket) pager.textContent = "loading the items: " + ++got + " of " + ks.length;
  }))).then(() => { if (mine === ticket) then(); }, err => {
    if (mine !== ticket) return;
    grid.replaceChildren(el("div", "empty", "part of this report is missing (" + err.message +
      "): run asyncimg report again"));
    pager.textContent = "";
  });
}
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function card(it) {
  const c = el("article", it.error ? "card failed" : "card");
  c.dataset.id = it.id;
  const imgs = el("div", "imgs");
  if (it.error) {
    imgs.append(el("div", "ph", it.error.type || "failed"));
  } else {
    imgs.style.setProperty("--cols", Math.ceil(Math.sqrt(it.images.length)) || 1);
    for (const im of it.images) {
      if (im.missing) { imgs.append(el("div", "ph", "missing: " + im.missing)); continue; }
      const a = el("a"); a.href = im.full;
      const img = el("img"); img.loading = "lazy"; img.decoding = "async";
      img.alt = it.prompt; img.src = im.thumb || im.full;
      a.append(img); imgs.append(a);
    }
  }
  const b = el("div", "body");
  const head = el("div", "small");
  head.append(el("span", "badge " + (it.error ? "failed" : "ok"), it.error ? "failed" : "done"),
              " line " + it.line + " \u00b7 " + it.seconds + " s" +
              (it.attempts != null ? " \u00b7 " + it.attempts + " attempt" +
               (it.attempts === 1 ? "" : "s") : "") +
              (it.rate_limited ? " \u00b7 " + it.rate_limited + " \u00d7 429" : ""));
  b.append(head);
  const p = el("div", "prompt", it.prompt); p.title = it.prompt; b.append(p);
  if (it.revised) b.append(el("div", "revised", "revised: " + it.revised));
  if (it.params) {
    const chips = el("div", "chips");
    for (const [k, v] of Object.entries(it.params)) chips.append(el("span", "chip", k + " " + v));
    b.append(chips);
  }
  if (it.error) {
    const e = it.error, box = el("div", "err");
    box.append(el("b", "", [e.type, e.code, e.status].filter(Boolean).join(" \u00b7 ")),
               e.message || "");
    if (e.param) box.append(el("div", "small", "param: " + e.param));
    b.append(box);
  }
  b.append(el("div", "small mono", it.id + (it.request_id ? " \u00b7 " + it.request_id : "")));
  c.append(imgs, b);
  return c;
}
function draw() {
  const count = shown ? shown.length : TOTAL;
  const pages = Math.max(1, Math.ceil(count / PAGE));
  page = Math.min(page, pages - 1);
  const from = page * PAGE, to = Math.min(count, from + PAGE);
  if (!shown) {
    const ks = missing(from, to);
    if (ks.length) return loadThen(ks, draw);
  }
  ticket++;
  const slice = [];
  for (let i = from; i < to; i++)
    slice.push(shown ? shown[i] : chunks[Math.floor(i / CHUNK)][i % CHUNK]);
  grid.replaceChildren(...slice.map(card));
  if (!slice.length) grid.append(el("div", "empty", "nothing matches"));
  pager.textContent = count + " of " + TOTAL + " items \u00b7 page " +
    (page + 1) + " of " + pages;
  for (const nav of document.querySelectorAll("nav.pages")) {
    nav.querySelector(".prev").disabled = page === 0;
    nav.querySelector(".next").disabled = page >= pages - 1;
  }
  document.body.dataset.rendered = String(slice.length);
  if (!shown) for (const k of missing(to, Math.min(TOTAL, to + PAGE))) load(k).catch(() => {});
}
function apply() {
  page = 0;
  if (status === "all" && !query) {
    shown = null;
    return draw();
  }
  const ks = missing(0, TOTAL);
  if (ks.length) return loadThen(ks, apply);
  const q = query.toLowerCase();
  shown = [];
  for (const part of chunks) for (const it of part) {
    if ((status === "all" || (status === "failed") === !!it.error) &&
        (!q || (it.prompt + " " + (it.revised || "") + " " + it.id + " " +
                (it.error ? it.error.message || "" : "")).toLowerCase().includes(q)))
      shown.push(it);
  }
  draw();
}
for (const btn of document.querySelectorAll("[data-status]")) {
  btn.addEventListener("click", () => {
    status = btn.dataset.status;
    for (const other of document.querySelectorAll("[data-status]"))
      other.classList.toggle("on", other === btn);
    apply();
  });
}
document.getElementById("search").addEventListener("input", e => {
  query = e.target.value;
  apply();
});
function turn(by) {
  page += by;
  draw();
  scrollTo(0, grid.offsetTop - 60);
}
for (const nav of document.querySelectorAll("nav.pages")) {
  nav.querySelector(".prev").addEventListener("click", () => turn(-1));
  nav.querySelector(".next").addEventListener("click", () => turn(1));
}
draw();
performance.mark("asyncimg-rendered");
