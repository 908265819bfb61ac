"""fullpass worker: settings, database, queue wiring, CLI and clients."""
