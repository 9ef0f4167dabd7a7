"""HTTP plumbing below the routes: the server and its draining, the request guard, bodies and
uploads, middleware, CORS, API keys, and the one table that turns domain errors into statuses."""
