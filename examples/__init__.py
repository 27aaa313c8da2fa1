"""Example models for autopipe; each module's ``build()`` returns a ModelSpec."""
