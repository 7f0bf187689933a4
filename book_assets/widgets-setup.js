// Loaded between the vendored require.js and embed-amd.js (_config.yml: nb_ipywidgets_js), so that
// @jupyter-widgets/html-manager 1.0.6 works offline and beside MathJax 3.
(function () {
  // 1. embed-amd.js derives its webpack publicPath (where its Font Awesome files are) from the URL
  //    requirejs gives its AMD module, by default relative to the page. Map the module id onto
  //    the vendored copy, beside this file (src may end in "?v=...").
  //    The bundle defines @jupyter-widgets/base and /controls too, which derive theirs the same way
  //    (from "@jupyter-widgets/controls": the page's folder + "@jupyter-widgets/", where a Button's or
  //    a FileUpload's icon font would be looked for): give each a URL in the vendored folder.
  var staticDir = document.currentScript.src.replace(/[^/]*$/, "");
  var widgets = staticDir + "vendor/widgets/";
  require.config({paths: {
    "@jupyter-widgets/html-manager/dist": widgets.slice(0, -1),
    "@jupyter-widgets/html-manager": widgets + "html-manager",
    "@jupyter-widgets/base": widgets + "base",
    "@jupyter-widgets/controls": widgets + "controls",
  }});

  // 2. html-manager typesets widget labels with MathJax 2's API, MathJax.Hub.Queue(["Typeset",
  //    MathJax.Hub, element]), whenever window.MathJax exists; the book loads MathJax 3 (on pages
  //    with math), which has no Hub. Provide that one call on MathJax 3's typesetPromise.
  if (window.MathJax === undefined) return;
  var hub = {
    Queue: function (job) {
      var mj = window.MathJax;
      if (mj.startup && mj.startup.promise) {
        mj.startup.promise.then(function () { return mj.typesetPromise([job[2]]); });
      } // else MathJax 3 has not started: its first pass over the page typesets the label
    },
  };
  var config = window.MathJax;  // Sphinx's MathJax 3 configuration, until MathJax replaces it
  config.Hub = hub;
  config.startup = Object.assign({}, config.startup, {
    ready: function () {
      window.MathJax.startup.defaultReady();
      window.MathJax.Hub = hub;
    },
  });
})();
