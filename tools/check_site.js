// Run in a page of the built site by tools/check_site.py once the page has loaded. Waits for MathJax and
// the saved widgets to draw, then measures what a reader sees; the value is a plain object for Python.
(async () => {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const waitFor = async (test, ms) => {
    for (const end = Date.now() + ms; Date.now() < end; await sleep(100)) if (test()) return true;
    return test();
  };
  const describe = (el) => {
    const text = (el.innerText || el.alt || el.getAttribute("src") || "").trim().replace(/\s+/g, " ");
    return `<${el.tagName.toLowerCase()}${el.className && typeof el.className === "string" ? "." +
      el.className.trim().split(/\s+/).join(".") : ""}> "${text.slice(0, 60)}"`;
  };

  // Colour themes: pydata-sphinx-theme reads data-theme (what is shown) and data-mode (the choice).
  window.__courseSetMode = (mode) => {
    document.documentElement.dataset.theme = mode;
    document.documentElement.dataset.mode = mode;
    return getComputedStyle(document.body).backgroundColor;
  };
  const still = document.createElement("style");
  still.textContent = "*, *::before, *::after { transition: none !important; animation: none !important; }";
  document.head.appendChild(still);

  // Math: every Sphinx math element becomes a MathJax container.
  const mathElements = [...document.querySelectorAll("span.math, div.math")];
  if (mathElements.length) {
    await waitFor(() => window.MathJax && MathJax.startup && MathJax.startup.promise, 20000);
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  }
  const math_untypeset = mathElements.filter((el) => !el.querySelector("mjx-container"))
    .map((el) => el.textContent.trim().slice(0, 80));
  const math_errors = [...document.querySelectorAll("mjx-merror")]
    .map((el) => (el.getAttribute("data-mjx-error") || el.textContent).slice(0, 120));
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
    acceptNode: (node) => node.parentElement.closest("script, style, pre, code, textarea, .highlight, mjx-container")
      ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT,
  });
  for (let node; (node = walker.nextNode());) {
    const raw = node.textContent.match(/\\\(|\\\[|\$\$/);
    if (raw) math_untypeset.push(`raw TeX left in the text: "${node.textContent.trim().slice(0, 80)}"`);
  }

  // Widgets: the embed manager draws each saved view into a div.widget-subarea just before its script tag.
  const views = [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')];
  const drawn = (script) => {
    const area = script.previousElementSibling;
    return !!(area && area.classList.contains("widget-subarea") &&
      area.querySelector(".jupyter-widgets, .lm-Widget") && area.getBoundingClientRect().height > 0);
  };
  if (views.length) await waitFor(() => views.every(drawn), 20000);
  const widgets_unrendered = views.filter((v) => !drawn(v)).length;

  // Images: all loaded (lazy ones are asked for now), all with a real text alternative.
  const images = [...document.images];
  await Promise.all(images.map((img) => {
    if (img.complete) return null;
    img.loading = "eager";
    return Promise.race([new Promise((r) => { img.onload = img.onerror = r; }), sleep(10000)]);
  }));
  const broken_images = images.filter((img) => !(img.complete && img.naturalWidth > 0))
    .map((img) => (img.getAttribute("src") || "").slice(0, 80));
  const shortSrc = (img) => (img.getAttribute("src") || "").slice(0, 80);
  const noAlt = images.filter((img) => {
    if (img.getAttribute("role") === "presentation" || img.closest('[aria-hidden="true"]')) return false;
    const alt = (img.getAttribute("alt") || "").trim();
    return !alt || /\.(png|jpe?g|gif|svg|webp)$/i.test(alt) || alt.includes("_images/");
  });
  // A widget's output is drawn by the embed manager, which gives its images no alt text; the page's static
  // figure of the same content carries it (tests/test_site.py checks there is one). Counted, not failed.
  const widget_images_without_alt = noAlt.filter((img) => img.closest(".widget-subarea")).length;
  const cellStart = (img) => {
    const code = img.closest(".cell") && img.closest(".cell").querySelector(".cell_input pre");
    return code ? ` in the output of the cell starting "${code.textContent.trim().split("\n")[0].slice(0, 70)}"` : "";
  };
  const images_without_alt = noAlt.filter((img) => !img.closest(".widget-subarea"))
    .map((img) => `${shortSrc(img)}${cellStart(img)}`);

  // Headings of the article: one h1 first, and no level skipped on the way down.
  const heading_problems = [];
  const article = document.querySelector("article") || document.body;
  let previous = 0;
  for (const h of article.querySelectorAll("h1, h2, h3, h4, h5, h6")) {
    const level = Number(h.tagName[1]);
    const name = h.textContent.replace(/[#¶]$/, "").trim().slice(0, 60);
    if (previous === 0 && level !== 1) heading_problems.push(`the first heading is h${level}: "${name}"`);
    else if (level === 1 && previous !== 0) heading_problems.push(`a second h1: "${name}"`);
    else if (level > previous + 1 && previous !== 0) heading_problems.push(`h${previous} then h${level}: "${name}"`);
    previous = level;
  }

  // Contrast (WCAG 2 AA: 4.5:1, 3:1 for large text) of every visible text in light and dark mode.
  const parse = (c) => {
    const m = c.match(/rgba?\(([\d.]+),\s*([\d.]+),\s*([\d.]+)(?:,\s*([\d.]+))?\)/);
    if (m) return [Number(m[1]), Number(m[2]), Number(m[3]), m[4] === undefined ? 1 : Number(m[4])];
    const n = c.match(/color\(srgb ([\d.]+) ([\d.]+) ([\d.]+)(?: \/ ([\d.]+))?\)/);
    if (n) return [n[1] * 255, n[2] * 255, n[3] * 255, n[4] === undefined ? 1 : Number(n[4])];
    return null;
  };
  const over = (top, bottom) => {
    const a = top[3];
    return [0, 1, 2].map((i) => top[i] * a + bottom[i] * (1 - a)).concat(1);
  };
  const luminance = (c) => {
    const [r, g, b] = c.slice(0, 3).map((v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const background = (el) => {
    const layers = [];
    for (let node = el; node && node.nodeType === 1; node = node.parentElement) {
      const style = getComputedStyle(node);
      if (style.backgroundImage !== "none" && !style.backgroundImage.startsWith("url(")) return null;
      const c = parse(style.backgroundColor);
      if (c && c[3] > 0) {
        layers.push(c);
        if (c[3] >= 1) break;
      }
    }
    return layers.reverse().reduce((below, layer) => over(layer, below), [255, 255, 255, 1]);
  };
  const contrast = (mode) => {
    window.__courseSetMode(mode);
    const seen = new Map();
    for (const el of document.body.querySelectorAll("*")) {
      if (el.closest("script, style, mjx-container, svg, .headerlink, [aria-hidden='true'], button:disabled")) continue;
      if (![...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
      const style = getComputedStyle(el);
      if (style.visibility !== "visible" || Number(style.opacity) === 0 || !el.getClientRects().length) continue;
      const rect = el.getBoundingClientRect();
      if (rect.width < 2 || rect.height < 2) continue;
      const bg = background(el);
      const fg = parse(style.color);
      if (!bg || !fg) continue;
      const text = over(fg, bg);
      const [hi, lo] = [luminance(text), luminance(bg)].sort((a, b) => b - a);
      const ratio = (hi + 0.05) / (lo + 0.05);
      const size = parseFloat(style.fontSize);
      const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
      if (ratio < (large ? 3 : 4.5)) {
        const key = `${el.tagName.toLowerCase()}.${[...el.classList].join(".")} ${style.color} on ${
          `rgb(${bg.slice(0, 3).map(Math.round).join(", ")})`}`;
        if (!seen.has(key)) seen.set(key, `${describe(el)} ratio ${ratio.toFixed(2)}: ${key}`);
      }
    }
    return [...seen.values()].slice(0, 20);
  };
  const contrast_problems = {};
  for (const mode of ["light", "dark"]) {
    const found = contrast(mode);
    if (found.length) contrast_problems[mode] = found;
  }
  window.__courseSetMode("light");

  return {
    math_total: mathElements.length, math_untypeset, math_errors,
    widget_views: views.length, widgets_unrendered,
    broken_images, images_without_alt, widget_images_without_alt, heading_problems, contrast_problems,
    links: [...document.querySelectorAll("a[href]")].map((a) => a.href),
    // The page's own text, without the navigation around it (which links every page of the book).
    article_links: [...article.querySelectorAll("a[href]")].filter((a) => !a.closest(".prev-next-area, nav"))
      .map((a) => a.href),
  };
})()
