"""HTTP in front of the server, knowing nothing of models: the small request / response / route layer
(``routing``), the uvicorn transport with the connection limits (``transport``), Host/Origin/CORS checks
(``edge``), token authorization (``auth``) and listener addresses (``addresses``). The protocols' routes
live in ``torchship.serving.protocols``; ``torchship.serving.apps`` puts both together per listener."""
