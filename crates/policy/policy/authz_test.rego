# Unit tests for the default policy. Run them with `credproxy policy test DIR`.
#
# Every rule whose name starts with `test_` is a test; it passes when it evaluates to a value
# other than false. Each test builds an input document with `with input as …`.
#
# There is no test for host case or trailing dots: the proxy canonicalises hosts before the
# policy sees them (see docs/policy.md), so the policy compares plain strings.

package credproxy.authz_test

import data.credproxy.authz

# A representative request: agent-a calls GET https://api.github.com/repos/acme/widgets.
identity := {
	"agent_id": "agent-a",
	"subject": "svc-agent-a",
	"roles": ["github-reader"],
	"groups": ["agents"],
	"issuer": "https://idp.example.com",
}

request := {
	"method": "GET",
	"authority": "api.github.com:443",
	"host": "api.github.com",
	"port": 443,
	"scheme": "https",
	"path": "/repos/acme/widgets",
	"query_keys": [],
	"allowlisted": true,
}

github := {
	"id": "github",
	"type": "bearer",
	"location": "header:authorization",
	"bound_domains": ["api.github.com"],
	"bound": true,
	"allowed_roles": ["github-reader", "github-admin"],
}

# The same credential placeholder, but bound to another host.
openai := {
	"id": "openai",
	"type": "bearer",
	"location": "header:authorization",
	"bound_domains": ["api.openai.com"],
	"bound": false,
	"allowed_roles": ["github-reader"],
}

base := {
	"version": 1,
	"identity": identity,
	"request": request,
	"credentials": [],
	"listener": {"name": "agents", "kind": "tcp", "peer": "127.0.0.1:50000"},
	"time": "2025-01-01T12:00:00Z",
}

with_credentials(creds) := object.union(base, {"credentials": creds})

# --- allowed ---

test_allow_without_credentials_with_identity if {
	authz.allow with input as base
	count(authz.deny_reasons) == 0 with input as base
}

test_allow_bound_credential_with_role if {
	inp := with_credentials([github])
	authz.allow with input as inp
	count(authz.deny_reasons) == 0 with input as inp
}

test_allow_any_one_of_the_allowed_roles if {
	agent := object.union(identity, {"roles": ["github-admin"]})
	inp := object.union(with_credentials([github]), {"identity": agent})
	authz.allow with input as inp
}

# --- refused ---

test_deny_without_identity if {
	inp := object.union(base, {"identity": null})
	not authz.allow with input as inp
	authz.deny_reasons == {"no authenticated identity"} with input as inp
}

test_deny_without_identity_even_with_credentials if {
	inp := object.union(with_credentials([github]), {"identity": null})
	not authz.allow with input as inp
	authz.deny_reasons == {"no authenticated identity"} with input as inp
}

test_deny_destination_not_allowlisted if {
	inp := object.union(base, {"request": object.union(request, {
		"authority": "evil.example:443",
		"host": "evil.example",
		"allowlisted": false,
	})})
	not authz.allow with input as inp
	authz.deny_reasons == {"destination evil.example:443 is not allowlisted"} with input as inp
}

test_deny_unbound_credential if {
	inp := with_credentials([object.union(github, {"bound": false})])
	not authz.allow with input as inp
	authz.deny_reasons == {"credential github is not bound to api.github.com"} with input as inp
}

test_deny_missing_role if {
	agent := object.union(identity, {"roles": ["openai-user"]})
	inp := object.union(with_credentials([github]), {"identity": agent})
	not authz.allow with input as inp
	authz.deny_reasons == {
		"agent agent-a has none of the roles allowed to use credential github (github-admin, github-reader)",
	} with input as inp
}

test_deny_credential_without_allowed_roles if {
	inp := with_credentials([object.union(github, {"allowed_roles": []})])
	not authz.allow with input as inp
	authz.deny_reasons == {
		"agent agent-a has none of the roles allowed to use credential github (no roles are allowed)",
	} with input as inp
}

test_deny_two_credentials_one_unbound if {
	inp := with_credentials([github, openai])
	not authz.allow with input as inp
	authz.deny_reasons == {"credential openai is not bound to api.github.com"} with input as inp
}

test_deny_reports_every_problem if {
	agent := object.union(identity, {"roles": []})
	inp := object.union(with_credentials([openai]), {
		"identity": agent,
		"request": object.union(request, {"allowlisted": false}),
	})
	not authz.allow with input as inp
	authz.deny_reasons == {
		"destination api.github.com:443 is not allowlisted",
		"credential openai is not bound to api.github.com",
		"agent agent-a has none of the roles allowed to use credential openai (github-reader)",
	} with input as inp
}
