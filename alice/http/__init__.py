"""HTTP glue: routes, auth, errors and URLs over the Runtime. The only place that knows HTTP."""
