//! The paths of the local API. The agent routes the templates (axum's
//! `{name}` placeholders); clients fill them with `fill`, which escapes the
//! value, so neither side writes a path out by hand.

pub const STATUS: &str = "/v1/status";
pub const COUNTERS: &str = "/v1/counters";

pub const CLUSTER: &str = "/v1/cluster";
pub const CLUSTER_INIT: &str = "/v1/cluster/init";
pub const CLUSTER_JOIN: &str = "/v1/cluster/join";
/// Query: `role=manager|worker`, `rotate=true|false`.
pub const JOIN_TOKEN: &str = "/v1/cluster/join-token";

pub const NODES: &str = "/v1/nodes";
pub const NODE: &str = "/v1/nodes/{name}";
pub const NODE_UPDATE: &str = "/v1/nodes/{name}/update";

pub const NETWORKS: &str = "/v1/networks";
pub const NETWORK: &str = "/v1/networks/{name}";

/// Query: `network=NAME` to list one network's endpoints.
pub const ENDPOINTS: &str = "/v1/endpoints";
pub const ENDPOINT: &str = "/v1/endpoints/{id}";
pub const ENDPOINT_HEALTH: &str = "/v1/endpoints/{id}/health";

pub const SERVICES: &str = "/v1/services";
pub const SERVICE: &str = "/v1/services/{name}";
pub const SERVICE_UPDATE: &str = "/v1/services/{name}/update";
pub const SERVICE_TASKS: &str = "/v1/services/{name}/tasks";

/// Query: a `TraceFilter`.
pub const TRACE: &str = "/v1/trace";

/// `template` with its one `{…}` placeholder replaced by `value`, escaped
/// as one path segment.
pub fn fill(template: &str, value: &str) -> String {
    match (template.find('{'), template.find('}')) {
        (Some(open), Some(close)) if open < close => format!(
            "{}{}{}",
            &template[..open],
            path_segment(value),
            &template[close + 1..]
        ),
        _ => template.to_owned(),
    }
}

/// `path?key=value`, the value escaped.
pub fn with_query(path: &str, key: &str, value: &str) -> String {
    format!("{path}?{key}={}", path_segment(value))
}

/// Escapes a user-given name for use as one URL path segment (or a query
/// value): everything but RFC 3986's unreserved characters is %-encoded.
pub fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_is_filled_with_the_escaped_value() {
        assert_eq!(fill(NODE, "n1"), "/v1/nodes/n1");
        assert_eq!(fill(SERVICE_TASKS, "a b/c"), "/v1/services/a%20b%2Fc/tasks");
        assert_eq!(fill(NODES, "ignored"), NODES);
    }

    #[test]
    fn a_query_value_is_escaped() {
        assert_eq!(
            with_query(ENDPOINTS, "network", "a&b"),
            "/v1/endpoints?network=a%26b"
        );
    }
}
