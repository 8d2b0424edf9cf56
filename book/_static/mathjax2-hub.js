// The few MathJax 2 calls (MathJax.Hub) that ipywidgets and Thebe's output renderer make,
// answered by the MathJax 3 this site runs. Widget pages load this file before the widget
// manager (nb_ipywidgets_js in _config.yml); Thebe loads it where it would fetch MathJax 2 from
// a CDN (thebe_mathjax_path in _config.yml, see book/_ext/bookext.py).
(function () {
  function typeset(mathjax, element) {
    mathjax.startup.promise.then(function () {
      return mathjax.typesetPromise(element ? [element] : undefined);
    });
  }

  function install() {
    var mathjax = window.MathJax;
    if (!mathjax || mathjax.Hub || !mathjax.startup) {
      return;
    }
    mathjax.Hub = {
      Config: function () {},
      Configured: function () {},
      Register: { StartupHook: function () {} },
      // Queue(["Typeset", MathJax.Hub, element], ...): typeset those elements, skip the rest
      // (MathJax 2 extension loading has no MathJax 3 counterpart here).
      Queue: function () {
        Array.prototype.forEach.call(arguments, function (command) {
          if (Array.isArray(command) && command[0] === "Typeset") {
            typeset(mathjax, command[2]);
          }
        });
      },
    };
  }

  // MathJax 3 is a deferred script: it exists once the document has been parsed.
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", install);
  } else {
    install();
  }
})();
