"""The serving room, one front end: the HTTP server (``server``, FastAPI), its form parser
(``http_form``), Ray Serve (``ray_serve``), batching of independent jobs (``batching``), progress streams
(``progress``) and the Prometheus metrics (``metrics``). It uses the orchestration (``asymvq.pipeline``) and never the CLI.
Nothing is imported here: fastapi, ray and prometheus_client load only with the module that needs them."""
