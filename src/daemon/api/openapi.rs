//! The OpenAPI 3 document, built from the route table [`super::ROUTES`], so that the document
//! and the router cannot drift apart.

use axum::Json;
use serde_json::{Value, json};

use super::{Caller, ROUTES, right_name};

pub(super) async fn openapi(Caller(_token): Caller) -> Json<Value> {
    Json(openapi_document())
}

/// The OpenAPI 3 document, built from [`ROUTES`].
pub fn openapi_document() -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let mut params = Vec::new();
        for name in ["env", "run"] {
            if r.path.contains(&format!("{{{name}}}")) {
                params.push(json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }));
            }
        }
        if r.path.ends_with("/report") {
            params.push(json!({ "name": "format", "in": "query", "required": false,
                "schema": { "type": "string", "enum": ["md", "html", "json"], "default": "md" } }));
        }
        let right = r.right.map_or("none (any valid token)", right_name);
        let mut responses = serde_json::Map::new();
        let ok = if r.method == "POST" && r.path.ends_with("/approvals") {
            "201"
        } else if r.method == "POST" {
            "202"
        } else {
            "200"
        };
        responses.insert(ok.into(), json!({ "description": "OK", "content": { "application/json": { "schema": { "type": "object" } } } }));
        responses.insert(
            "401".into(),
            json!({ "$ref": "#/components/responses/Unauthorized" }),
        );
        if r.right.is_some() {
            responses.insert(
                "403".into(),
                json!({ "$ref": "#/components/responses/Forbidden" }),
            );
        }
        if r.path.contains("{run}") {
            responses.insert("404".into(), json!({ "description": "No such run in this environment", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }));
        }
        let retry = r.path.ends_with("/gitops/retry");
        if retry {
            responses.insert("409".into(), json!({ "description": "No GitOps controller runs, it does not follow the environment, or no failed commit waits", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }));
        } else if r.method == "POST" {
            responses.insert("409".into(), json!({ "description": "Refused: the environment's lock is held, or the two-person rule", "content": { "application/json": { "schema": { "type": "object" } } } }));
            responses.insert("422".into(), json!({ "description": "Bad request body, or the command ended with an error before a run began", "content": { "application/json": { "schema": { "type": "object" } } } }));
        }
        let mut op = json!({
            "summary": r.summary,
            "description": format!("Right needed: {right}."),
            "parameters": params,
            "responses": responses,
        });
        if r.method == "POST" && !retry {
            let schema = match r.path.rsplit('/').next() {
                Some("approvals") => json!({ "type": "object", "required": ["by"], "properties": {
                    "run": { "type": "string", "description": "run id, or latest (default)" },
                    "by": { "type": "string", "description": "the role or third party" },
                    "note": { "type": "string" }, "reference": { "type": "string" },
                    "expires": { "type": "string", "description": "24h, or a time" } } }),
                Some("promote") => json!({ "type": "object", "properties": {
                    "playbook": { "type": "string" }, "reason": { "type": "string" } } }),
                Some("rollback") => json!({ "type": "object", "properties": {
                    "to": { "type": "integer", "minimum": 1 } } }),
                _ => {
                    json!({ "type": "object", "properties": { "playbook": { "type": "string" } } })
                }
            };
            op["requestBody"] = json!({ "required": false, "content": { "application/json": { "schema": schema } } });
        }
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method.to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "rollout daemon API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every call needs `Authorization: Bearer <token>` (401 otherwise). A token acts with its rights only and sees its clients' environments only (403 otherwise; an environment of another client answers exactly like one that does not exist).",
        },
        "security": [ { "bearer": [] } ],
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": { "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } } },
            "responses": {
                "Unauthorized": { "description": "No token, or an unknown one", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
                "Forbidden": { "description": "The token lacks the right, or does not see the environment", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
            },
        },
    })
}
