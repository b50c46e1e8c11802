"""The server's front doors: one module per protocol, each parsing its messages, calling the engine
(`seqserve.service.inference`, state store, batcher, runtime) and rendering the answers. No engine module
imports from here."""
