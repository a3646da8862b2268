"""Framework integrations (TRL, Axolotl). They depend on the core, never the reverse."""
