"""The serving room, one front end: the HTTP server (``server``, FastAPI; a request's life around its job in
``admission``, the single-process back end in ``runner``, what back ends return in ``results``), its form parser
(``http_form``), Ray Serve (``ray_serve``: the application; ``ray_config``, ``ray_stages``, ``ray_ingress``,
``ray_loopback``), batching of independent jobs (``batching``), progress streams (``progress``) and the Prometheus
metrics (``metrics``). It uses the orchestration (``asymvq.pipeline``) and never the CLI.
Nothing is imported here: fastapi, ray and prometheus_client load only with the module that needs them."""
