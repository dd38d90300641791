# Tests for github-repos-get.rego. Run with `credproxy policy test DIR`.

package credproxy.authz_test

import data.credproxy.authz

agent_a := {
	"agent_id": "agent-a",
	"subject": "svc-agent-a",
	"roles": ["github-reader"],
	"groups": [],
	"issuer": "https://idp.example.com",
}

github := {
	"id": "github",
	"type": "bearer",
	"location": "header:authorization",
	"bound_domains": ["api.github.com"],
	"bound": true,
	"allowed_roles": ["github-reader"],
}

# GET https://api.github.com/<path> by agent-a with the GitHub credential.
req(method, path) := {
	"version": 1,
	"identity": agent_a,
	"request": {
		"method": method,
		"authority": "api.github.com:443",
		"host": "api.github.com",
		"port": 443,
		"scheme": "https",
		"path": path,
		"query_keys": [],
		"allowlisted": true,
	},
	"credentials": [github],
	"listener": {"name": "agents", "kind": "tcp", "peer": "127.0.0.1:50000"},
	"time": "2025-01-01T12:00:00Z",
}

test_agent_a_may_read_a_repository if {
	inp := req("GET", "/repos/acme/widgets")
	authz.allow with input as inp
	count(authz.deny_reasons) == 0 with input as inp
}

test_agent_a_may_read_deep_repository_paths if {
	authz.allow with input as req("GET", "/repos/acme/widgets/pulls/1/files")
}

test_post_is_refused if {
	inp := req("POST", "/repos/acme/widgets/issues")
	not authz.allow with input as inp
	authz.deny_reasons == {"credential github may only be used for GET, not POST"} with input as inp
}

test_other_paths_are_refused if {
	inp := req("GET", "/user")
	not authz.allow with input as inp
	authz.deny_reasons == {
		"credential github may only be used on https://api.github.com/repos/*, not https://api.github.com:443/user",
	} with input as inp
}

test_dot_segments_are_refused if {
	not authz.allow with input as req("GET", "/repos/../user")
	not authz.allow with input as req("GET", "/repos/%2e%2e/user")
}

test_agent_b_is_refused_even_with_the_role if {
	agent_b := object.union(agent_a, {"agent_id": "agent-b"})
	inp := object.union(req("GET", "/repos/acme/widgets"), {"identity": agent_b})
	not authz.allow with input as inp
	authz.deny_reasons == {"agent agent-b may not use credential github"} with input as inp
}

test_agent_a_needs_the_role_too if {
	no_roles := object.union(agent_a, {"roles": []})
	inp := object.union(req("GET", "/repos/acme/widgets"), {"identity": no_roles})
	not authz.allow with input as inp
}

test_requests_without_the_credential_follow_the_default_rules if {
	inp := object.union(req("POST", "/user"), {"credentials": []})
	authz.allow with input as inp
}

test_no_identity_is_refused if {
	inp := object.union(req("GET", "/repos/acme/widgets"), {"identity": null})
	not authz.allow with input as inp
	"no authenticated identity" in authz.deny_reasons with input as inp
}
