# Example operator policy: agent-a may use the GitHub credential, and only to read
# repositories: `GET https://api.github.com/repos/...`. Everything else follows the rules of the
# default policy (allowlisted destination, authenticated agent, credentials bound to the
# destination and used by an agent holding one of their allowed roles).
#
# Install it in place of the default policy (copy this file and its tests into the policy
# directory) and test it offline:
#
#   credproxy policy test DIR
#
# This policy is written "deny-list style": every problem adds a sentence to deny_reasons,
# and allow requires the basic conditions plus an empty deny_reasons. credproxy refuses a
# request whose deny_reasons is non-empty even if allow is true; writing allow this way keeps
# the policy consistent when evaluated by other tools too.

package credproxy.authz

# The credential id as configured in credproxy (credentials.<id>).
github_credential := "github"

# Agents (identity.agent_id) allowed to use it.
github_agents := {"agent-a"}

default allow := false

allow if {
	input.request.allowlisted == true
	authenticated
	count(deny_reasons) == 0
}

authenticated if is_object(input.identity)

has_allowed_role(c) if {
	some role in c.allowed_roles
	role in input.identity.roles
}

# --- The rules of the default policy. ---

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

deny_reasons contains msg if {
	authenticated
	some c in input.credentials
	not has_allowed_role(c)
	msg := sprintf(
		"agent %s has none of the roles allowed to use credential %s (%s)",
		[input.identity.agent_id, c.id, concat(", ", sort(c.allowed_roles))],
	)
}

# --- The GitHub credential: agent-a only, GET only, api.github.com/repos/* only. ---

github_used if {
	some c in input.credentials
	c.id == github_credential
}

deny_reasons contains msg if {
	github_used
	authenticated
	not input.identity.agent_id in github_agents
	msg := sprintf("agent %s may not use credential %s", [input.identity.agent_id, github_credential])
}

deny_reasons contains msg if {
	github_used
	input.request.method != "GET"
	msg := sprintf(
		"credential %s may only be used for GET, not %s",
		[github_credential, input.request.method],
	)
}

deny_reasons contains msg if {
	github_used
	not github_repos_request
	msg := sprintf(
		"credential %s may only be used on https://api.github.com/repos/*, not %s://%s%s",
		[github_credential, input.request.scheme, input.request.authority, input.request.path],
	)
}

github_repos_request if {
	input.request.scheme == "https"
	input.request.host == "api.github.com"
	startswith(input.request.path, "/repos/")
	not dot_segment(input.request.path)
}

# The path is passed on as the agent sent it. Refuse `.` and `..` segments (also
# percent-encoded) so that `/repos/../user` cannot escape the prefix if the upstream
# normalises the path.
dot_segment(path) if regex.match(`(^|/)(\.|%2[eE]){1,2}(/|$)`, path)
