// Loaded on pages with ipywidgets, after require.js and before the widget manager (embed-amd.js).
(function () {
  // 1. Serve the widget manager's own files (fonts) from this site instead of a CDN.
  // embed-amd.js finds them relative to the RequireJS module
  // "@jupyter-widgets/html-manager/dist/libembed-amd"; map that path to _static/html-manager/dist,
  // computed from this script's URL so that it works at any page depth.
  var staticRoot = document.currentScript.src.replace(/widgets-config\.js(\?.*)?$/, "");
  require.config({
    paths: { "@jupyter-widgets/html-manager/dist": staticRoot + "html-manager/dist" },
  });

  // 2. ipywidgets typesets widget labels with the MathJax 2 call MathJax.Hub.Queue; the site
  // runs MathJax 3, so translate that call. This listener is registered before the widget
  // manager's, so it runs first (MathJax, a deferred script, is defined by then).
  document.addEventListener("DOMContentLoaded", function () {
    var mathjax = window.MathJax;
    if (!mathjax || mathjax.Hub || !mathjax.startup) {
      return;
    }
    mathjax.Hub = {
      Queue: function (command) {
        var element = Array.isArray(command) ? command[2] : undefined;
        mathjax.startup.promise.then(function () {
          return mathjax.typesetPromise(element ? [element] : undefined);
        });
      },
    };
  });
})();
