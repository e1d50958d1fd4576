"""The newest migration's revision, in a module light enough to import before anything else."""

# A test keeps this in step with app/store/migrations/versions.
HEAD_REVISION = "0011_event_keyset"
