// The pages' live part: what changed (/live, server-sent events: a list of tasks, each with
// its latest progress, message and state) moves progress bars and states without a reload.
// Elements carry the task's id: progress-ID, percent-ID, message-ID, status-ID.
(function () {
  if (!window.EventSource) return;
  var source = new EventSource("/live");
  source.onmessage = function (message) {
    JSON.parse(message.data).forEach(show);
  };
  function show(e) {
    if (e.progress !== undefined && e.progress !== null) {
      var percent = Math.max(0, Math.min(100, Math.round(e.progress * 100)));
      var bar = document.querySelector("#progress-" + e.id + " .bar");
      if (bar) bar.style.width = percent + "%";
      var text = document.getElementById("percent-" + e.id);
      if (text) text.textContent = percent + "%";
      var said = document.getElementById("message-" + e.id);
      if (said && e.message) said.textContent = e.message;
    }
    if (e.status) {
      var state = document.getElementById("status-" + e.id);
      if (state) { state.textContent = e.status; state.className = "state " + e.status; }
    }
  }
})();
