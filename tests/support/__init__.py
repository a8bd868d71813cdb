"""Helpers of the tests, imported as `support.<module>` (pytest puts tests/ on the path): the test
service's settings and calls (`service`), media checks (`media`), fakes for what a CPU cannot run
(`fakes`), a throwaway PostgreSQL server (`postgres`) and a local HTTP server (`servers`)."""
