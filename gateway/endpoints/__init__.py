"""Endpoint adapters: what each API's request means to the one request path (auth → plan → admission → route →
relay → settle). An adapter reads a validated body into an `Intake`; the pipeline does the rest the same way for
every API. See `specs` for the table of endpoints and `intake` for the readers."""
