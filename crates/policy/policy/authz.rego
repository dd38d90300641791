# credproxy default authorization policy.
#
# credproxy evaluates this package for every request that goes through the proxy, with or
# without credentials. Two rules matter:
#
#   allow         must be exactly `true` for the request to go ahead;
#   deny_reasons  a set of sentences saying why a request is refused. They are logged and
#                 written to the audit record. A non-empty set refuses the request even when
#                 `allow` is true, so a rule added here can veto without touching `allow`.
#
# Anything else (allow undefined or false, an evaluation error, the time limit) refuses.
#
# The input document is described in docs/policy.md (input version 1). Hosts in the input are
# canonical: lower case, no trailing dot, internationalised names in punycode. Compare them as
# plain strings; this policy never needs to deal with case.
#
# Start from this file (`credproxy policy init DIR` writes it out), edit it, and run
# `credproxy policy test DIR` to run the unit tests in authz_test.rego.

package credproxy.authz

# Refuse unless every condition of an `allow` rule below holds.
default allow := false

# A request may go ahead when
#   - its destination is on the proxy's allowlist,
#   - it comes from an authenticated agent (a verified token), and
#   - every credential placeholder in it is bound to this destination and the agent holds one
#     of the roles allowed to use that credential.
# A request without credentials only needs the first two.
allow if {
	input.request.allowlisted == true
	authenticated
	every c in input.credentials {
		# `bound` is computed by the proxy: the destination host matches one of the
		# credential's bound_domains.
		c.bound == true
		has_allowed_role(c)
	}
}

# The proxy sets `identity` to null when the request carried no valid token. (A bare
# `input.identity` would not do: in Rego, null is a true statement.)
authenticated if is_object(input.identity)

# True when the agent holds at least one role in the credential's allowed_roles.
has_allowed_role(c) if {
	some role in c.allowed_roles
	role in input.identity.roles
}

# --- Why a request is refused: one sentence per problem found. ---

deny_reasons contains "no authenticated identity" if not authenticated

deny_reasons contains msg if {
	input.request.allowlisted != true
	msg := sprintf("destination %s is not allowlisted", [input.request.authority])
}

deny_reasons contains msg if {
	some c in input.credentials
	c.bound != true
	msg := sprintf("credential %s is not bound to %s", [c.id, input.request.host])
}

# Only said of an authenticated agent: without an identity there are no roles to speak of, and
# "no authenticated identity" already explains the refusal.
deny_reasons contains msg if {
	authenticated
	some c in input.credentials
	not has_allowed_role(c)
	msg := sprintf(
		"agent %s has none of the roles allowed to use credential %s (%s)",
		[input.identity.agent_id, c.id, roles_text(c.allowed_roles)],
	)
}

roles_text(roles) := "no roles are allowed" if count(roles) == 0

roles_text(roles) := concat(", ", sort(roles)) if count(roles) > 0
