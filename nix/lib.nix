# Pure helpers shared by the modules and the tests. Nothing here touches `pkgs`, so the
# nftables ruleset and the config rendering can be checked by plain evaluation.
{lib}: rec {
  # Drop `null` values from attribute sets, recursing into attribute sets and lists. The
  # modules declare optional typed keys with `default = null`; credproxy's config parser
  # treats an absent key and a missing section differently from `key: null`, so nulls are
  # never rendered.
  stripNulls = v:
    if builtins.isAttrs v && !(lib.isDerivation v)
    then lib.mapAttrs (_: stripNulls) (lib.filterAttrs (_: x: x != null) v)
    else if builtins.isList v
    then map stripNulls (builtins.filter (x: x != null) v)
    else v;

  # True when a value that names a secret would end up in the world-readable Nix store:
  # either a string under the store, or a Nix path literal (./secret), which Nix copies into
  # the store as soon as it is interpolated or rendered to JSON.
  leaksIntoStore = v:
    v
    != null
    && (builtins.isPath v || lib.hasPrefix "${builtins.storeDir}/" (toString v));

  # One assertion per secret-bearing option. `what` names the option for the message.
  secretPathAssertions = pairs:
    map (p: {
      assertion = !(leaksIntoStore p.value);
      message = ''
        ${p.what} = ${toString p.value} would put a secret into the Nix store.
        Give the path as a string ("/run/secrets/...") that is read at run time, or deliver the
        file with systemd LoadCredential; never a Nix path literal or a store path.
      '';
    })
    pairs;

  # Every `*_file` key in a rendered credproxy configuration that names a secret, with its
  # key path (for assertion messages). Public files (CA certificates) are not listed.
  configSecretFiles = settings: let
    openbao = (settings.secrets or {}).openbao or null;
    auth =
      if openbao == null
      then {}
      else openbao.auth or {};
    approle = auth.approle or {};
  in
    lib.filter (p: p.value != null) (
      [
        {
          what = "services.credproxy.settings.ca.key_file";
          value = (settings.ca or {}).key_file or null;
        }
        {
          what = "services.credproxy.settings.secrets.openbao.auth.token_file";
          value = auth.token_file or null;
        }
        {
          what = "services.credproxy.settings.secrets.openbao.auth.approle.role_id_file";
          value = approle.role_id_file or null;
        }
        {
          what = "services.credproxy.settings.secrets.openbao.auth.approle.secret_id_file";
          value = approle.secret_id_file or null;
        }
      ]
      ++ lib.imap0 (i: c: {
        what = "services.credproxy.settings.credentials[${toString i}].source.file";
        value = (c.source or {}).file or null;
      }) (settings.credentials or [])
      ++ lib.concatLists (lib.imap0 (i: l: let
        t = l.agent_token or {};
        at = "services.credproxy.settings.listeners[${toString i}].agent_token";
      in [
        {
          what = "${at}.client_credentials.client_secret_file";
          value = (t.client_credentials or {}).client_secret_file or null;
        }
        {
          what = "${at}.dev_issuer.key_file";
          value = (t.dev_issuer or {}).key_file or null;
        }
      ]) (settings.listeners or []))
    );

  # Endpoint strings for `credproxy bridge FROM TO`. interface.md gives `tcp:HOST:PORT` and
  # `vsock:CID:PORT`; the listening VSOCK form (`vsock:any:PORT`) and the hybrid-vsock form for
  # Cloud Hypervisor/Firecracker (`vsock_uds:PATH:PORT`, the host side of a `vsock_uds`
  # listener) follow the config file's spelling. Kept here so a change is one edit.
  endpoint = {
    tcp = host: port: "tcp:${host}:${toString port}";
    vsock = cid: port: "vsock:${toString cid}:${toString port}";
    vsockUds = path: port: "vsock_uds:${path}:${toString port}";
  };

  # The address part of "10.88.1.1/24".
  addressOf = cidr: builtins.head (lib.splitString "/" cidr);

  # The nftables table that locks down every agent VM's TAP device: default drop, with
  # explicit exceptions. `vms` is a list of
  #   { tap; hostAddress; allowDns; tailscale (null or { interface; destinations; }); }
  # hostAddress is the host's address on that TAP, without prefix length; `destinations`
  # are the CIDRs the VM may reach through the Tailscale interface (the tailnet's ranges:
  # with an exit node on the host, anything else would leave through it, past the proxy).
  #
  # What it enforces, per TAP:
  #   input   (VM -> host): established/related, DNS to the host's TAP address if allowed,
  #                         everything else dropped (the proxy is reached over VSOCK, never IP);
  #   forward (VM -> any):  established/related, and the tailnet's addresses through the
  #                         Tailscale interface if allowed; everything else dropped; nothing
  #                         is forwarded *to* the TAP unless it answers a connection the VM
  #                         made;
  #   output  (host -> VM): only replies, so host services bound to 0.0.0.0 cannot open
  #                         connections into the VM (the gateway is reached over VSOCK).
  # A drop in any base chain is final for the packet, so these rules hold whatever other
  # tables (nixos-fw, tailscale's own) accept.
  nftRuleset = vms: let
    taps = map (v: v.tap) vms;
    tapSet = "{ ${lib.concatMapStringsSep ", " (t: ''"${t}"'') taps} }";
    inputRules = v:
      lib.optionals v.allowDns [
        ''iifname "${v.tap}" ip daddr ${v.hostAddress} udp dport 53 accept''
        ''iifname "${v.tap}" ip daddr ${v.hostAddress} tcp dport 53 accept''
      ];
    family = cidr:
      if lib.hasInfix ":" cidr
      then "ip6"
      else "ip";
    forwardRules = v:
      lib.optionals (v.tailscale != null)
      (map (d: ''iifname "${v.tap}" oifname "${v.tailscale.interface}" ${family d} daddr ${d} accept'')
        v.tailscale.destinations);
    chain = name: hook: rules: ''
      chain ${name} {
        type filter hook ${hook} priority filter - 10; policy accept;
      ${lib.concatMapStrings (r: "  ${r}\n") rules}}
    '';
  in
    if vms == []
    then ""
    else
      lib.concatStringsSep "\n" [
        (chain "input" "input" (
          [
            "iifname != ${tapSet} accept"
            "ct state established,related accept"
            "ct state invalid drop"
          ]
          ++ lib.concatMap inputRules vms
          ++ [''counter drop comment "openclaw-vm: VM to host"'']
        ))
        (chain "forward" "forward" (
          [
            "iifname != ${tapSet} oifname != ${tapSet} accept"
            "ct state established,related accept"
            "ct state invalid drop"
          ]
          ++ lib.concatMap forwardRules vms
          ++ [''counter drop comment "openclaw-vm: VM egress"'']
        ))
        (chain "output" "output" [
          "oifname != ${tapSet} accept"
          "ct state established,related accept"
          ''counter drop comment "openclaw-vm: host to VM"''
        ])
      ];

  # `credentials` of an agent unit (services.openclaw-vm.vms.<name>,
  # services.openclaw-containers.instances.<name>): placeholder, the variable that carries it,
  # and the rest of the credproxy entry. `unit` ("VM", "instance") and `place` ("guest",
  # "container") name the agent's unit in the descriptions; `extraOptions` adds options.
  credentialsOption = {
    pkgs,
    unit,
    place,
    extraOptions ? {},
  }:
    lib.mkOption {
      default = {};
      description = ''
        Credentials this ${unit}'s agent may use (and no other ${unit}'s): placeholder, where it
        is injected, and where the secret lives.
      '';
      example = lib.literalExpression ''
        {
          anthropic = {
            placeholder = "agent-vault-00000000-0000-0000-0000-000000000001";
            envVar = "ANTHROPIC_API_KEY";
            settings = {
              header_name = "x-api-key";
              bound_domains = [ "api.anthropic.com" ];
              allowed_roles = [ "proxy-user" ];
              source.openbao.path = "openclaw/credentials/anthropic";
            };
          };
        }
      '';
      type = lib.types.attrsOf (lib.types.submodule {
        options =
          {
            placeholder = lib.mkOption {
              type = lib.types.str;
              description = "Placeholder handed to the agent (not a secret).";
              example = "agent-vault-00000000-0000-0000-0000-000000000001";
            };
            envVar = lib.mkOption {
              type = lib.types.nullOr lib.types.str;
              default = null;
              description = "Environment variable that carries the placeholder in the ${place}.";
              example = "ANTHROPIC_API_KEY";
            };
            settings = lib.mkOption {
              type = (pkgs.formats.yaml {}).type;
              default = {};
              description = "The rest of the credential's entry in `services.credproxy.settings.credentials` (id and placeholder are added).";
              example = {
                header_name = "x-api-key";
                bound_domains = ["api.anthropic.com"];
                allowed_roles = ["proxy-user"];
                source.openbao.path = "openclaw/credentials/anthropic";
              };
            };
          }
          // extraOptions;
      });
    };

  # `identity` of an agent unit: how credproxy obtains the unit's agent token for its
  # listener (client credentials with the secret on the host, or the dev issuer).
  # `agentId` is the unit's agent id (the default client id); `unit`/`place` as above.
  identityOptions = {
    agentId,
    unit,
    place,
    exampleId,
  }: {
    tokenUrl = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      description = "Token endpoint of your OIDC provider (client credentials); or give `issuer`.";
      example = "https://id.example/realms/openclaw/protocol/openid-connect/token";
    };
    issuer = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      description = "OIDC issuer whose token endpoint is found by discovery; or give `tokenUrl`.";
      example = "https://id.example/realms/openclaw";
    };
    clientId = lib.mkOption {
      type = lib.types.str;
      default = agentId;
      defaultText = lib.literalExpression "agentId";
      description = "This ${unit}'s OIDC client id.";
      example = exampleId;
    };
    clientSecretFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      description = ''
        Host file with this ${unit}'s OIDC client secret (a string path read at run time, never
        the store). It is given to credproxy only (`LoadCredential`); the ${place} never sees
        it. Not needed with dangerousDevMode (the dev issuer is used).
      '';
      example = "/run/secrets/openclaw-${exampleId}-client-secret";
    };
    audience = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      description = "Audience to ask the provider for.";
      example = "credproxy";
    };
    scope = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      description = "Scope to ask the provider for.";
      example = "openid";
    };
    caFiles = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [];
      description = "Extra CA certificates to verify an https provider.";
      example = ["/etc/ssl/id-ca.pem"];
    };
    devRoles = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = ["proxy-user"];
      description = "With dangerousDevMode: the roles in the dev tokens of this ${unit}'s agent.";
      example = ["proxy-user" "github-reader"];
    };
  };

  # A listener's `agent_token` from an `identityOptions` value: the dev issuer when `dev`,
  # client credentials when a client secret is given (`clientSecretFile` is where credproxy
  # reads it), otherwise none.
  agentToken = {
    dev,
    devIssuerKey,
    clientSecretFile,
  }: identity:
    if dev
    then {
      dev_issuer = {
        key_file = devIssuerKey;
        roles = identity.devRoles;
      };
    }
    else if identity.clientSecretFile != null
    then {
      client_credentials = {
        token_url = identity.tokenUrl;
        inherit (identity) issuer audience scope;
        client_id = identity.clientId;
        client_secret_file = clientSecretFile;
        ca_files = identity.caFiles;
      };
    }
    else null;

  # The `services.credproxy.settings.credentials` entries of agent units (each with
  # `agentId` and `credentials` as `credentialsOption` declares them). Each credential is
  # granted to its unit's agent only: the proxy itself refuses it to every other agent (403
  # credential_not_granted, a misuse alarm), before and whatever the policy says.
  credproxyCredentials = units:
    lib.concatMap (u:
      lib.mapAttrsToList (id: c:
        {
          inherit id;
          inherit (c) placeholder;
        }
        // c.settings
        // {allowed_agents = [u.agentId];})
      u.credentials)
    units;

  # The Rego rules that make each agent's credentials and domains its own, for modules that
  # give every agent a listener of its own (services.openclaw-vm, services.openclaw-containers),
  # and their unit tests. Both modules' rules live in one package (credproxy.authz): `prefix`
  # keeps their names apart; `what` ("VM", "container") is how the messages name an agent's
  # unit. `units` is a list of
  #   { name; listener; agent; credentials = [ids]; domains = [lower-case hosts or "*.x"];
  #     kind; peer; }   (kind and peer: the listener as policy input shows it, for the tests)
  # These rules only add deny reasons; the default policy's allow still applies.
  ownershipPolicy = {
    module,
    prefix,
    what,
    units,
  }: let
    table = lib.listToAttrs (map (u: lib.nameValuePair u.listener {inherit (u) name agent credentials domains;}) units);
    owner = lib.listToAttrs (lib.concatMap (u: map (id: lib.nameValuePair id u.listener) u.credentials) units);
  in ''
    package credproxy.authz

    # Generated by ${module}. Every ${what}'s credentials and destinations are its own:
    #   - a credential of a ${what} is usable only on its listener, by its agent;
    #   - a request on a ${what}'s listener may reach only that ${what}'s domains.
    # These rules only add deny reasons; the default policy's allow still applies.

    ${prefix}_listeners := ${builtins.toJSON table}

    ${prefix}_credential_owner := ${builtins.toJSON owner}

    deny_reasons contains msg if {
    	some c in input.credentials
    	owner := ${prefix}_credential_owner[c.id]
    	not ${prefix}_may_use(owner)
    	msg := sprintf("credential %s belongs to ${what} %s; agent %s on listener %s may not use it", [c.id, ${prefix}_listeners[owner].name, ${prefix}_agent(input.identity), input.listener.name])
    }

    ${prefix}_may_use(owner) if {
    	owner == input.listener.name
    	is_object(input.identity)
    	input.identity.agent_id == ${prefix}_listeners[owner].agent
    }

    ${prefix}_agent(identity) := identity.agent_id if is_object(identity)

    ${prefix}_agent(identity) := "(none)" if not is_object(identity)

    deny_reasons contains msg if {
    	unit := ${prefix}_listeners[input.listener.name]
    	not ${prefix}_domain_allowed(unit.domains, input.request.host)
    	msg := sprintf("${what} %s may not reach %s (its allowedDomains: %s)", [unit.name, input.request.host, concat(", ", unit.domains)])
    }

    ${prefix}_domain_allowed(domains, host) if host in domains

    # "*.example.com" matches exactly one extra label, as credproxy's allowlist does.
    ${prefix}_domain_allowed(domains, host) if {
    	some d in domains
    	startswith(d, "*.")
    	suffix := substring(d, 1, -1)
    	endswith(host, suffix)
    	label := trim_suffix(host, suffix)
    	label != ""
    	not contains(label, ".")
    }
  '';

  # Unit tests of ownershipPolicy's rules for `credproxy policy test` (never served): each
  # unit reaches its first plain domain with its credentials, and every host in `reachable`;
  # no other domain; no other unit's credential.
  ownershipPolicyTests = {
    prefix,
    what,
    units,
    reachable ? [],
  }: let
    id = n: lib.replaceStrings ["-" "."] ["_" "_"] n;
    # A whole input document (docs/policy.md, version 1), as the proxy would build it.
    input = u: host: creds:
      builtins.toJSON {
        version = 1;
        listener = {
          name = u.listener;
          inherit (u) kind peer;
        };
        identity = {
          agent_id = u.agent;
          subject = u.agent;
          roles = ["proxy-user"];
          groups = [];
          issuer = "test";
        };
        request = {
          method = "GET";
          inherit host;
          authority = "${host}:443";
          port = 443;
          scheme = "https";
          path = "/";
          query_keys = [];
          allowlisted = true;
        };
        credentials =
          map (c: {
            id = c;
            type = "api_key";
            location = "header:x-api-key";
            bound_domains = [host];
            bound = true;
            allowed_roles = ["proxy-user"];
          })
          creds;
        time = "2025-01-01T00:00:00Z";
      };
    ownDomain = u: lib.findFirst (d: !(lib.hasPrefix "*." d) && !(lib.elem d reachable)) null u.domains;
  in
    ''
      package credproxy.${prefix}_test

      import data.credproxy.authz
    ''
    + lib.concatMapStrings (u:
      lib.optionalString (ownDomain u != null) ''

        test_${id u.name}_reaches_its_own_domain if {
        	reasons := authz.deny_reasons with input as ${input u (ownDomain u) u.credentials}
        	count(reasons) == 0
        }
      ''
      + ''

        test_${id u.name}_may_not_reach_other_domains if {
        	reasons := authz.deny_reasons with input as ${input u "not-allowed.invalid" []}
        	some msg in reasons
        	contains(msg, "may not reach not-allowed.invalid")
        }
      ''
      + lib.concatMapStrings (h: ''

        test_${id u.name}_reaches_${id h} if {
        	reasons := authz.deny_reasons with input as ${input u h []}
        	count(reasons) == 0
        }
      '')
      reachable)
    units
    + lib.concatMapStrings (u:
      lib.concatMapStrings (other:
        lib.concatMapStrings (c: ''

          test_${id u.name}_may_not_use_${id c}_of_${id other.name} if {
          	reasons := authz.deny_reasons with input as ${input u "not-allowed.invalid" [c]}
          	some msg in reasons
          	contains(msg, "credential ${c} belongs to ${what} ${other.name}")
          }
        '')
        other.credentials) (lib.filter (o: o.name != u.name) units))
    units;

  # systemd sandboxes the modules' units start from (house-style §7); a unit adds what it
  # needs with `//` (address families, syscall filter, capabilities).
  hardening = {
    # Long-running services: credproxy and its helpers on the host, the agents in the guest.
    service = {
      CapabilityBoundingSet = "";
      AmbientCapabilities = "";
      NoNewPrivileges = true;
      ProtectSystem = "strict";
      ProtectHome = true;
      PrivateTmp = true;
      PrivateDevices = true;
      ProtectProc = "invisible";
      ProcSubset = "pid";
      ProtectHostname = true;
      ProtectClock = true;
      ProtectKernelTunables = true;
      ProtectKernelModules = true;
      ProtectKernelLogs = true;
      ProtectControlGroups = true;
      RestrictNamespaces = true;
      RestrictRealtime = true;
      RestrictSUIDSGID = true;
      LockPersonality = true;
      RemoveIPC = true;
      SystemCallArchitectures = "native";
      LimitCORE = 0;
      MemorySwapMax = 0;
      UMask = "0077";
    };
    # `credproxy bridge` units: a stateless byte relay (W^X, no capabilities, the default
    # syscall filter); the unit names its address families.
    bridge = {
      CapabilityBoundingSet = "";
      NoNewPrivileges = true;
      ProtectSystem = "strict";
      ProtectHome = true;
      PrivateTmp = true;
      PrivateDevices = true;
      ProtectProc = "invisible";
      MemoryDenyWriteExecute = true;
      SystemCallArchitectures = "native";
      SystemCallFilter = ["@system-service" "~@privileged" "~@resources"];
      LimitCORE = 0;
      MemorySwapMax = 0;
      UMask = "0077";
    };
  };
}
