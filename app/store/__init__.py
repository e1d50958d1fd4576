"""The database: engine and sessions, models, migrations, and the writers beside the alarm path."""
