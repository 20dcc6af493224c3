"""The study harness: results tables, shared flags and budgets, the model zoo, deployment for analog studies.

Only the scripts in studies/ and the command line import it; nothing else of the package does."""
