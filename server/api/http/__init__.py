"""HTTP: the hot-path front door, REST and the Hugging Face route, OpenAPI, body reading."""
