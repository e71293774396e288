/* fesaug review page: filter, sort and mark synthetic faces; save the marks as rejects.txt.
   Plain JavaScript, no libraries, no network: the data arrives as <script> files beside this one
   (fetch() is not allowed from file:// pages), and cards are rendered a screenful at a time so
   tens of thousands of rows stay responsive. */
(function () {
  "use strict";
  var t0 = performance.now();
  var R = window.FESAUG_REVIEW;
  var meta = R.meta;
  var BATCH = 120;
  var syn = [];
  var real = [];
  R.chunks.forEach(function (chunk) {
    var into = chunk.kind === "synthetic" ? syn : real;
    var cols = chunk.columns;
    chunk.rows.forEach(function (values) {
      var o = {};
      for (var j = 0; j < cols.length; j++) o[cols[j]] = values[j];
      into.push(o);
    });
  });
  R.chunks = null; // the rows now live in syn/real only
  var byId = new Map();
  syn.forEach(function (r, i) { r.order = i; byId.set(r.id, r); });

  function $(sel) { return document.querySelector(sel); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function num(v) { return v === "" || v === null || isNaN(Number(v)) ? null : Number(v); }
  function fmt(v) { return v === null || v === undefined ? "–" : Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(3); }

  // ---- marks, kept across reloads of the same manifest
  var storeKey = "fesaug-review:" + meta.key;
  var marked = new Set();
  try {
    JSON.parse(localStorage.getItem(storeKey) || "[]").forEach(function (id) { if (byId.has(id)) marked.add(id); });
  } catch (e) { /* storage may be off for file:// pages; marks then last until the tab closes */ }
  function save() {
    try { localStorage.setItem(storeKey, JSON.stringify(Array.from(marked))); } catch (e) { /* see above */ }
  }

  // ---- view: the filtered, sorted rows; cards rendered so far
  var grid = $("#grid");
  var view = [];
  var rendered = 0;
  var focus = -1;

  function filters() {
    var thresholds = [];
    meta.scores.forEach(function (s, j) {
      var lo = num($("#min-" + s.column).value), hi = num($("#max-" + s.column).value);
      if (lo !== null || hi !== null) thresholds.push([j, lo, hi]);
    });
    return {
      cls: $("#f-class").value,
      src: $("#f-source").value,
      subject: $("#f-subject").value.trim().toLowerCase(),
      marks: $("#f-marked").value,
      thresholds: thresholds,
      key: $("#sort-key").value,
      dir: $("#sort-dir").value === "desc" ? -1 : 1,
    };
  }

  function keep(r, f) {
    if (f.cls && r.class !== f.cls) return false;
    if (f.src && r.source_class !== f.src) return false;
    if (f.subject && (r.subject || "").toLowerCase().indexOf(f.subject) < 0) return false;
    if (f.marks === "marked" && !marked.has(r.id)) return false;
    if (f.marks === "unmarked" && marked.has(r.id)) return false;
    for (var t = 0; t < f.thresholds.length; t++) {
      var v = r.scores[f.thresholds[t][0]];
      if (v === null) return false; // no score cannot meet a threshold
      if (f.thresholds[t][1] !== null && v < f.thresholds[t][1]) return false;
      if (f.thresholds[t][2] !== null && v > f.thresholds[t][2]) return false;
    }
    return true;
  }

  function sorter(f) {
    var k = f.key, d = f.dir;
    if (k.indexOf("score:") === 0) {
      var j = Number(k.slice(6));
      return function (a, b) {
        var x = a.scores[j], y = b.scores[j];
        if (x === null || y === null) return x === y ? a.order - b.order : x === null ? 1 : -1; // unscored last
        return x === y ? a.order - b.order : (x - y) * d;
      };
    }
    if (k === "subject" || k === "source_class") {
      return function (a, b) {
        var c = String(a[k] || "").localeCompare(String(b[k] || ""));
        return c ? c * d : a.order - b.order;
      };
    }
    return function (a, b) { return (a.order - b.order) * d; };
  }

  function update() {
    var f = filters();
    view = syn.filter(function (r) { return keep(r, f); });
    view.sort(sorter(f));
    grid.textContent = "";
    rendered = 0;
    focus = -1;
    renderMore(BATCH);
    showReal(f.cls);
    status();
  }

  function renderMore(n) {
    var end = Math.min(view.length, rendered + n);
    var frag = document.createDocumentFragment();
    for (var i = rendered; i < end; i++) frag.appendChild(card(view[i], i));
    grid.appendChild(frag);
    rendered = end;
  }

  function face(src, cls, caption, title) {
    var fig = el("figure", cls);
    if (src) {
      var img = el("img", "thumb");
      img.loading = "lazy";
      img.decoding = "async";
      img.alt = caption;
      img.src = src;
      if (title) img.title = title;
      fig.appendChild(img);
    } else {
      fig.appendChild(el("div", "missing", "not in the manifest"));
    }
    fig.appendChild(el("figcaption", null, caption));
    return fig;
  }

  function card(r, i) {
    var c = el("article", "card" + (marked.has(r.id) ? " rejected" : ""));
    c.dataset.id = r.id;
    c.dataset.index = i;
    c.tabIndex = -1;
    c.appendChild(el("span", "badge", "rejected"));
    var faces = el("div", "faces");
    faces.appendChild(face(r.parent_img, "source", "source: " + (r.source_class || "?"), r.parent));
    faces.appendChild(face(r.img, "synthetic", "→ " + r.class, r.id));
    if (meta.counterfactuals) faces.appendChild(face(r.cf_img, "exact", "exact " + r.class, meta.counterfactuals));
    c.appendChild(faces);
    c.appendChild(el("div", "id", r.id));
    var dl = el("dl");
    function item(k, v) { dl.appendChild(el("dt", null, k)); dl.appendChild(el("dd", null, v)); }
    item("subject", (r.subject || "–") + (r.fold === null ? "" : " · fold " + r.fold));
    meta.scores.forEach(function (s, j) { item(s.label, fmt(r.scores[j])); });
    if (r.transform && r.transform !== "none") item("source shown", r.transform);
    if (r.replaces) item("replaces", r.replaces);
    c.appendChild(dl);
    c.addEventListener("click", function () { setFocus(i); toggle(r.id); });
    return c;
  }

  function cardAt(i) { return grid.querySelector('.card[data-index="' + i + '"]'); }

  function toggle(id) {
    if (marked.has(id)) marked.delete(id); else marked.add(id);
    save();
    var c = grid.querySelector('.card[data-id="' + CSS.escape(id) + '"]');
    if (c) c.classList.toggle("rejected", marked.has(id));
    status();
  }

  function setFocus(i) {
    if (!view.length) return;
    i = Math.max(0, Math.min(view.length - 1, i));
    if (i >= rendered) renderMore(i - rendered + BATCH);
    var old = cardAt(focus);
    if (old) old.classList.remove("focus");
    focus = i;
    var c = cardAt(i);
    c.classList.add("focus");
    c.focus({ preventScroll: true });
    c.scrollIntoView({ block: "nearest" });
  }

  function perRow() {
    var cards = grid.children;
    if (!cards.length) return 1;
    var top = cards[0].offsetTop, n = 0;
    while (n < cards.length && cards[n].offsetTop === top) n++;
    return Math.max(1, n);
  }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var t = e.target;
    if (t.closest && t.closest("input, select, textarea, button, summary")) return;
    var step = { ArrowRight: 1, l: 1, j: 1, ArrowLeft: -1, h: -1, k: -1 }[e.key];
    if (e.key === "ArrowDown") step = perRow();
    if (e.key === "ArrowUp") step = -perRow();
    if (step) {
      e.preventDefault();
      setFocus(focus < 0 ? 0 : focus + step);
    } else if ((e.key === "x" || e.key === " " || e.key === "Delete") && focus >= 0) {
      e.preventDefault();
      toggle(view[focus].id);
    } else if (e.key === "Escape" && focus >= 0) {
      var c = cardAt(focus);
      if (c) { c.classList.remove("focus"); c.blur(); }
      focus = -1;
    }
  });

  // ---- real faces of the chosen class, for comparison
  var realShown = 0;
  function showReal(cls) {
    var box = $("#real");
    var strip = box.querySelector(".strip");
    strip.textContent = "";
    realShown = 0;
    box.hidden = !cls;
    if (!cls) return;
    box.querySelector(".which").textContent = cls;
    addReal(cls, 48);
  }
  function addReal(cls, n) {
    var rows = real.filter(function (r) { return r.class === cls; });
    var strip = $("#real .strip");
    var end = Math.min(rows.length, realShown + n);
    for (var i = realShown; i < end; i++) {
      var r = rows[i];
      var tip = r.id + " · " + r.split + (r.fold === null ? "" : " · fold " + r.fold);
      strip.appendChild(face(r.img, "real", r.subject || "", tip));
    }
    realShown = end;
    var more = $("#real-more");
    more.hidden = realShown >= rows.length;
    more.textContent = "Show all " + rows.length;
    $("#real .count").textContent = rows.length + " real row(s)";
  }
  $("#real-more").addEventListener("click", function () { addReal($("#f-class").value, 1e9); });

  // ---- status line and per-class marked counts
  function status() {
    var shown = Math.min(rendered, view.length);
    $("#status").textContent =
      view.length + " of " + syn.length + " synthetic faces match · " + shown + " shown · " + marked.size +
      " marked rejected";
    var per = {};
    marked.forEach(function (id) { var c = byId.get(id).class; per[c] = (per[c] || 0) + 1; });
    document.querySelectorAll("td[data-marked]").forEach(function (td) {
      var n = per[td.dataset.marked] || 0;
      td.textContent = n;
      td.classList.toggle("marked", n > 0);
    });
    $("#download").disabled = marked.size === 0;
  }

  // ---- rejects.txt: one sample_id a line, in the page's order
  function rejectsText() {
    var ids = syn.filter(function (r) { return marked.has(r.id); }).map(function (r) { return r.id; });
    return ids.length ? ids.join("\n") + "\n" : "";
  }
  $("#download").addEventListener("click", function () {
    var a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([rejectsText()], { type: "text/plain" }));
    a.download = "rejects.txt";
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 2000);
  });
  $("#load").addEventListener("change", function (e) {
    var file = e.target.files[0];
    if (!file) return;
    var reader = new FileReader();
    reader.onload = function () {
      var unknown = 0;
      String(reader.result).split(/\r?\n/).forEach(function (line) {
        var id = line.trim();
        if (!id || id[0] === "#") return;
        if (byId.has(id)) marked.add(id); else unknown++;
      });
      save();
      update();
      if (unknown) $("#status").textContent += " · " + unknown + " id(s) in the file are not on this page";
    };
    reader.readAsText(file);
    e.target.value = "";
  });
  $("#clear").addEventListener("click", function () {
    if (!marked.size || !window.confirm("Unmark all " + marked.size + " face(s)?")) return;
    marked.clear();
    save();
    update();
  });

  // ---- wiring
  document.querySelectorAll("#controls select, #controls input[type=number]").forEach(function (c) {
    c.addEventListener("change", update);
  });
  $("#f-subject").addEventListener("input", update);
  document.querySelectorAll("button.class-link").forEach(function (b) {
    b.addEventListener("click", function () {
      $("#f-class").value = b.dataset.class;
      update();
      $("#controls").scrollIntoView();
    });
  });
  if ("IntersectionObserver" in window) {
    var sentinel = $("#sentinel");
    var observer = new IntersectionObserver(function (entries) {
      if (entries[0].isIntersecting && rendered < view.length) {
        renderMore(BATCH);
        status();
        // Observing again reports the sentinel afresh: more cards if it is still in reach.
        observer.unobserve(sentinel);
        observer.observe(sentinel);
      }
    }, { rootMargin: "1200px" });
    observer.observe(sentinel);
  }
  update();
  // Read by the tests and the benchmark: when the page became usable, in ms since navigation.
  R.ready = { parsed_ms: t0, interactive_ms: performance.now(), rows: syn.length };
  document.body.dataset.ready = "1";
})();
