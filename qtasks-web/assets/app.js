// Live updates: the page names its event stream in <body data-live>; each `regions` event
// carries new HTML (rendered and escaped by the server) for elements by id. No polling: one
// EventSource per page, which the browser reconnects by itself.
"use strict";
(function () {
  var url = document.body.getAttribute("data-live");
  if (!url || !window.EventSource) return;
  var state = document.getElementById("live-state");
  var source = new EventSource(url);
  source.addEventListener("regions", function (event) {
    var regions = JSON.parse(event.data);
    Object.keys(regions).forEach(function (id) {
      var element = document.getElementById(id);
      // Keep the keyboard focus where it is, and rows ticked for a bulk action: a region
      // that holds either is left alone.
      var ticked = element && element.querySelector("input[type=checkbox]:checked");
      if (element && !ticked && !element.contains(document.activeElement)) {
        element.innerHTML = regions[id];
      }
    });
    if (state) state.textContent = "live updates on";
  });
  source.addEventListener("error", function () {
    if (state) state.textContent = "live updates reconnecting…";
  });
})();
