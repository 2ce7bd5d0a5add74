"""`prefix-tuning serve`: many adapters of one frozen model behind one HTTP endpoint, answered in mixed batches.

* :mod:`.settings` (:class:`ServeSettings`): what a server is told, validated up front; the command line converts its
  flags into it (:mod:`.cli`);
* :mod:`.batching` (:class:`DynamicBatcher`): rows of concurrent requests, for any adapters, gathered into one batch
  and answered off the event loop;
* :mod:`.app` (:func:`create_app`): the FastAPI routes (`POST /predict`, `POST /adapters/{name}`, `GET /adapters`,
  `GET /health`, `GET /metrics`), with :mod:`.schemas` (request bodies), :mod:`.errors` (JSON errors),
  :mod:`.guard` (API key, body limits) and :mod:`.metrics` (Prometheus);
* :mod:`.server` (:func:`serve`): the listening socket, the model, uvicorn and a graceful stop on SIGTERM.

Importing this package imports neither FastAPI nor uvicorn (they come with the `serve` extra); :mod:`.app` and
:mod:`.server` do.
"""

from .settings import ServeSettings, SettingsError


__all__ = ["ServeSettings", "SettingsError"]
