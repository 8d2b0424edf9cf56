// Loaded on pages with ipywidgets, after require.js and before the widget manager (embed-amd.js).
// Serve the widget manager's own files (fonts) from this site instead of a CDN. embed-amd.js
// defines these RequireJS modules and finds its files relative to each module's path; map the
// paths to _static/html-manager/dist, computed from this script's URL so that it works at any
// page depth. (Unmapped, a module resolves next to the page, where no font is: Live Code's
// widgets would ask for chapters/@jupyter-widgets/<font>.)
(function () {
  var dist = document.currentScript.src.replace(/widgets-config\.js(\?.*)?$/, "") +
    "html-manager/dist";
  var paths = { "@jupyter-widgets/html-manager/dist": dist };
  ["base", "base7", "controls", "controls7", "html-manager"].forEach(function (name) {
    paths["@jupyter-widgets/" + name] = dist + "/" + name;
  });
  require.config({ paths: paths });
})();
