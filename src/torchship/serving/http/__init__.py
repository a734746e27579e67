"""HTTP in front of the server: the ASGI apps of the three listeners (``app``), the small request /
response / route layer they share (``routing``), the uvicorn transport with the connection limits
(``transport``), Host/Origin/CORS checks (``edge``), token authorization (``auth``) and listener
addresses (``addresses``). The protocols' routes live in ``torchship.serving.protocols``."""
