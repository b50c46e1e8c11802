"""The server's front doors: one module per protocol (with its converters beside it), each parsing its
messages, calling the engine's public calls (`seqserve.service.engine`) and the model kinds
(`seqserve.service.kinds`), and rendering the answers. No engine module imports from here."""
