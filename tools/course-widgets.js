// Loaded on pages with saved ipywidgets, after require.js and before the widgets embed manager; the build
// copies it into _static/vendor/ (tools/offline_assets.py), beside the files it names.
(function () {
  // The manager's bundles are named AMD modules; requirejs gives each an address from its name, and the
  // bundles look for their icon fonts beside that address. Naming _static/vendor/ makes it the real one.
  const vendor = new URL("./", document.currentScript.src).href;
  const paths = { "@jupyter-widgets/html-manager/dist": vendor.replace(/\/$/, "") };
  for (const name of ["base", "base7", "controls", "controls7", "html-manager", "output"]) {
    paths[`@jupyter-widgets/${name}`] = vendor + name;
  }
  window.require.config({ paths });

  // ipywidgets' controls typeset their labels with MathJax 2's MathJax.Hub.Queue; the site runs MathJax 3.
  // MathJax 3 replaces the global MathJax object when it starts, so the bridge is re-added on every set.
  const bridge = (mathjax) => {
    if (!mathjax || typeof mathjax !== "object" || mathjax.Hub) return;
    mathjax.Hub = {
      Queue: (...jobs) => {
        for (const job of jobs) {
          if (!Array.isArray(job) || job[0] !== "Typeset" || !job[2]) continue;
          const typeset = () => window.MathJax.typesetPromise && window.MathJax.typesetPromise([job[2]]);
          const ready = window.MathJax.startup && window.MathJax.startup.promise;
          ready ? ready.then(typeset) : typeset();
        }
      },
    };
  };
  let current = window.MathJax;
  bridge(current);
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    get: () => current,
    set: (value) => { current = value; bridge(current); },
  });
})();
