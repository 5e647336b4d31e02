//! docker-compose files read as an environment.
