"""The PROXY protocol (v1 and v2): the sans-I/O parser and encoder, and the server stage.

``_info`` (the records), ``_parse``, ``_encode`` and ``_crc32c`` import no
Trio; ``_stage`` is the server's connection stage that reads a header with
them (``ProxyStage``), and decides which sources may send one
(``TrustedSources``).
"""
