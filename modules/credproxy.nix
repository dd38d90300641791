# services.credproxy: the credential-injecting egress proxy on the host, plus the optional
# development dependencies (Temporal dev server, OpenBao dev server with provisioning).
#
# The configuration is rendered from `settings` (RFC 42) to JSON (a YAML subset) and checked
# with `credproxy check-config` at build time. It lives in the Nix store, so it holds only
# references to secrets (file paths, systemd credentials, OpenBao paths), never their values;
# an assertion refuses any secret path that would land in the store.
{
  config,
  lib,
  pkgs,
  ...
}: let
  cfg = config.services.credproxy;
  cplib = import ../nix/lib.nix {inherit lib;};
  inherit (lib) mkOption types literalExpression;

  format = pkgs.formats.yaml {};
  stateDir = "/var/lib/credproxy";
  publicDir = "/var/lib/credproxy-public";
  openbaoStateDir = "/var/lib/credproxy-openbao-dev";
  temporalStateDir = "/var/lib/credproxy-temporal";

  # A secret-bearing file: a path read at run time. `types.path` accepts strings; the
  # assertions below refuse store paths and Nix path literals.
  secretFile = types.path;

  listenerType = types.submodule {
    freeformType = format.type;
    options = {
      name = mkOption {
        type = types.str;
        description = "Listener name, used in logs, metrics and policy input.";
        example = "agents";
      };
      tcp = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "TCP address to listen on (`HOST:PORT`). Exactly one of tcp, unix, vsock, vsock_uds.";
        example = "127.0.0.1:18790";
      };
      unix = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Unix socket path to listen on.";
        example = "/run/credproxy/agents.sock";
      };
      unix_mode = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "File mode of the Unix socket (octal string; credproxy's default is 0660).";
        example = "0660";
      };
      peer_uids = mkOption {
        type = types.nullOr (types.listOf (types.either types.ints.unsigned (types.strMatching "[0-9]+-[0-9]+")));
        default = null;
        description = ''
          `unix` and `vsock_uds` listeners: the only uids (and inclusive ranges "FIRST-LAST")
          that may connect, checked with SO_PEERCRED at accept; any other peer is closed before
          a byte is read. Required with `agent_token` on a `unix` listener.
        '';
        example = [1001 "300000-365535"];
      };
      vsock = mkOption {
        type = types.nullOr (types.submodule {
          options = {
            cid = mkOption {
              type = types.either (types.enum ["any"]) types.ints.u32;
              default = "any";
              description = "Local CID to bind (`any`, or 2 for the host).";
              example = 2;
            };
            port = mkOption {
              type = types.ints.u32;
              description = "VSOCK port (32 bits).";
              example = 18790;
            };
            peer_cid = mkOption {
              type = types.nullOr (types.ints.between 3 4294967294);
              default = null;
              description = ''
                Accept connections from this guest CID only (the hypervisor sets a guest's CID;
                the guest cannot choose it). Required with `agent_token`.
              '';
              example = 4;
            };
          };
        });
        default = null;
        description = ''
          AF_VSOCK listener (QEMU with the vhost-vsock kernel device). Adds `AF_VSOCK` to the
          service's `RestrictAddressFamilies`.
        '';
        example = {
          cid = "any";
          port = 18790;
          peer_cid = 4;
        };
      };
      vsock_uds = mkOption {
        type = types.nullOr (types.submodule {
          options = {
            path = mkOption {
              type = types.str;
              description = "The hypervisor's hybrid-vsock Unix socket; credproxy listens on `<path>_<port>`.";
              example = "/var/lib/microvms/agent1/notify.vsock";
            };
            port = mkOption {
              type = types.ints.u32;
              description = "VSOCK port the guest connects to (on CID 2).";
              example = 18790;
            };
          };
        });
        default = null;
        description = "Hybrid-vsock listener (Cloud Hypervisor, Firecracker): a Unix socket named after the port.";
        example = {
          path = "/var/lib/microvms/agent1/notify.vsock";
          port = 18790;
        };
      };
      agent = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "If set, only this agent identity (the token's agent claim) may use this listener.";
        example = "agent1";
      };
      agent_token = mkOption {
        type = types.nullOr agentTokenType;
        default = null;
        description = ''
          The proxy obtains and refreshes the token of this listener's `agent` itself and
          authenticates the listener's connections with it (a request may still carry its own
          token, which must name the same agent). Only on listeners that identify their peer:
          `vsock` with `peer_cid`, `vsock_uds` (one path per VM), `unix`.
        '';
        example = {
          client_credentials = {
            token_url = "https://id.example/realms/openclaw/protocol/openid-connect/token";
            client_id = "vm-a";
            client_secret_file = "/run/credentials/credproxy.service/vm-a-client-secret";
          };
        };
      };
    };
  };

  agentTokenType = types.submodule {
    options = {
      client_credentials = mkOption {
        default = null;
        description = "Production: the OIDC client-credentials grant, client secret on the host.";
        example = {
          issuer = "https://id.example/realms/openclaw";
          client_id = "vm-a";
          client_secret_file = "/run/credentials/credproxy.service/vm-a-client-secret";
        };
        type = types.nullOr (types.submodule {
          options = {
            token_url = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "Token endpoint (exactly one of token_url, issuer).";
              example = "https://id.example/realms/openclaw/protocol/openid-connect/token";
            };
            issuer = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "Issuer whose token endpoint is found by discovery.";
              example = "https://id.example/realms/openclaw";
            };
            client_id = mkOption {
              type = types.str;
              description = "OAuth2 client id of the agent.";
              example = "vm-a";
            };
            client_secret_file = mkOption {
              type = secretFile;
              description = "File with the client secret, read at run time (never a store path).";
              example = "/run/credentials/credproxy.service/vm-a-client-secret";
            };
            audience = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "Audience to ask for.";
              example = "credproxy";
            };
            scope = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "Scope to ask for.";
              example = "openid";
            };
            ca_files = mkOption {
              type = types.listOf types.str;
              default = [];
              description = "Extra CA certificates for an https provider.";
              example = ["/etc/ssl/id-ca.pem"];
            };
          };
        });
      };
      dev_issuer = mkOption {
        default = null;
        description = "Development only: tokens minted with credproxy's own dev issuer key.";
        example = {
          key_file = "/var/lib/credproxy/dev-issuer/dev-issuer-key.pem";
          roles = ["proxy-user"];
        };
        type = types.nullOr (types.submodule {
          options = {
            key_file = mkOption {
              type = secretFile;
              description = "The dev issuer's private key (PEM).";
              example = "/var/lib/credproxy/dev-issuer/dev-issuer-key.pem";
            };
            roles = mkOption {
              type = types.listOf types.str;
              default = [];
              description = "Roles in the minted tokens.";
              example = ["proxy-user"];
            };
          };
        });
      };
    };
  };

  credentialType = types.submodule {
    freeformType = format.type;
    options = {
      id = mkOption {
        type = types.str;
        description = "Credential id (used in policy, audit and logs).";
        example = "anthropic";
      };
      placeholder = mkOption {
        type = types.strMatching "agent-vault-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";
        description = "The placeholder the agent holds instead of the secret (not itself a secret).";
        example = "agent-vault-00000000-0000-0000-0000-000000000001";
      };
      type = mkOption {
        type = types.enum ["api_key" "bearer" "basic_auth" "header"];
        default = "api_key";
        description = "How the secret is injected.";
        example = "bearer";
      };
      header_name = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Header that carries the secret.";
        example = "x-api-key";
      };
      header_prefix = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Text put before the secret in the header.";
        example = "Bearer ";
      };
      bound_domains = mkOption {
        type = types.listOf types.str;
        description = "The only hosts this credential is ever injected for.";
        example = ["api.anthropic.com"];
      };
      allowed_roles = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = null;
        description = "Roles (from the identity token) allowed to use this credential.";
        example = ["proxy-user"];
      };
      inject_in = mkOption {
        type = types.listOf (types.enum ["header" "query" "body"]);
        default = ["header"];
        description = "Where the placeholder may be replaced.";
        example = ["header"];
      };
      source = mkOption {
        description = "Where the secret comes from: exactly one of openbao, file, env.";
        example = {
          openbao = {
            path = "openclaw/credentials/anthropic";
            field = "key";
          };
        };
        type = types.submodule {
          options = {
            openbao = mkOption {
              type = types.nullOr (types.submodule {
                options = {
                  path = mkOption {
                    type = types.str;
                    description = "KV v2 path under `secrets.openbao.kv_mount`.";
                    example = "openclaw/credentials/anthropic";
                  };
                  field = mkOption {
                    type = types.str;
                    default = "key";
                    description = "Field of the KV entry that holds the secret.";
                    example = "key";
                  };
                };
              });
              default = null;
              description = "Read the secret from OpenBao KV v2.";
              example = {path = "openclaw/credentials/anthropic";};
            };
            file = mkOption {
              type = types.nullOr secretFile;
              default = null;
              description = "Read the secret from a file (a string path, read at run time; never a store path).";
              example = "/run/credentials/credproxy.service/anthropic";
            };
            env = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "Read the secret from an environment variable of the service.";
              example = "ANTHROPIC_API_KEY";
            };
          };
        };
      };
    };
  };

  # A section of the configuration: typed well-known keys, any other key passed through.
  section = description: example: options:
    mkOption {
      type = types.submodule {
        freeformType = format.type;
        inherit options;
      };
      default = {};
      inherit description example;
    };

  settingsType = types.submodule {
    freeformType = format.type;
    options = {
      listeners = mkOption {
        type = types.listOf listenerType;
        default = [];
        description = "Where agents connect. The openclaw-vm module adds one listener per VM.";
        example = literalExpression ''[ { name = "local"; tcp = "127.0.0.1:18790"; } ]'';
      };
      admin = section "Admin listener (/healthz, /readyz, /metrics)." {tcp = "127.0.0.1:18791";} {
        tcp = mkOption {
          type = types.nullOr types.str;
          default = "127.0.0.1:18791";
          description = "Admin listener: /healthz, /readyz, /metrics (Prometheus).";
          example = "127.0.0.1:9791";
        };
      };
      ca = section "The MITM certificate authority." {leaf_validity = "24h";} {
        cert_file = mkOption {
          type = types.str;
          default = "${stateDir}/ca/ca.crt";
          description = "MITM CA certificate (PEM).";
          example = "/var/lib/credproxy/ca/ca.crt";
        };
        key_file = mkOption {
          type = secretFile;
          default = "${stateDir}/ca/ca.key";
          description = "MITM CA private key (PEM), readable by the `credproxy` user only.";
          example = "/run/credentials/credproxy.service/ca-key";
        };
      };
      allowed_domains = mkOption {
        type = types.listOf types.str;
        default = [];
        description = ''Hosts agents may reach; "*.example.com" matches exactly one extra label.'';
        example = ["api.anthropic.com" "raw.githubusercontent.com"];
      };
      identity = section "How agents are identified." {oidc.issuer = "https://id.example/realms/openclaw";} {
        oidc = mkOption {
          default = null;
          description = "OIDC issuer whose JWTs identify agents (in `Proxy-Authorization`).";
          example = {
            issuer = "https://id.example/realms/openclaw";
            audiences = ["credproxy"];
          };
          type = types.nullOr (types.submodule {
            freeformType = format.type;
            options = {
              issuer = mkOption {
                type = types.str;
                description = "Issuer URL (discovery at `/.well-known/openid-configuration`).";
                example = "https://id.example/realms/openclaw";
              };
              audiences = mkOption {
                type = types.listOf types.str;
                default = ["credproxy"];
                description = "Accepted `aud` values.";
                example = ["credproxy"];
              };
              roles_claim = mkOption {
                type = types.str;
                default = "realm_access.roles";
                description = "Dotted path of the roles claim.";
                example = "resource_access.credproxy.roles";
              };
              agent_claim = mkOption {
                type = types.str;
                default = "azp";
                description = "Claim that names the agent (matched against a listener's `agent`).";
                example = "client_id";
              };
              algorithms = mkOption {
                type = types.listOf types.str;
                default = ["RS256" "ES256"];
                description = "Accepted signature algorithms.";
                example = ["ES256"];
              };
              leeway = mkOption {
                type = types.str;
                default = "30s";
                description = "Clock skew tolerated on exp/nbf.";
                example = "10s";
              };
            };
          });
        };
      };
      policy = section "Authorization policy (Rego)." {dir = "/etc/credproxy/policy";} {
        dir = mkOption {
          type = types.nullOr types.path;
          default = null;
          description = "Directory of `*.rego` files (package credproxy.authz); the built-in default policy when null.";
          example = literalExpression "./policy";
        };
      };
      secrets = section "Where secrets are read from." {openbao.address = "https://127.0.0.1:8200";} {
        openbao = mkOption {
          default = null;
          description = "OpenBao KV v2 secret store.";
          example = literalExpression ''
            {
              address = "https://127.0.0.1:8200";
              auth.approle = {
                role_id_file = "/run/credentials/credproxy.service/role-id";
                secret_id_file = "/run/credentials/credproxy.service/secret-id";
              };
            }
          '';
          type = types.nullOr (types.submodule {
            freeformType = format.type;
            options = {
              address = mkOption {
                type = types.str;
                default = "https://127.0.0.1:8200";
                description = "OpenBao API address.";
                example = "https://bao.internal:8200";
              };
              ca_file = mkOption {
                type = types.nullOr types.str;
                default = null;
                description = "CA bundle to verify OpenBao's certificate (public; may be a store path).";
                example = "/etc/credproxy/openbao-ca.pem";
              };
              auth = {
                approle = mkOption {
                  default = null;
                  description = "AppRole login (preferred). Give the files with `services.credproxy.loadCredential`.";
                  example = {
                    role_id_file = "/run/credentials/credproxy.service/role-id";
                    secret_id_file = "/run/credentials/credproxy.service/secret-id";
                  };
                  type = types.nullOr (types.submodule {
                    options = {
                      role_id_file = mkOption {
                        type = secretFile;
                        description = "File holding the AppRole role id.";
                        example = "/run/credentials/credproxy.service/role-id";
                      };
                      secret_id_file = mkOption {
                        type = secretFile;
                        description = "File holding the AppRole secret id.";
                        example = "/run/credentials/credproxy.service/secret-id";
                      };
                      mount = mkOption {
                        type = types.str;
                        default = "approle";
                        description = "Mount path of the AppRole auth method.";
                        example = "approle";
                      };
                    };
                  });
                };
                token_file = mkOption {
                  type = types.nullOr secretFile;
                  default = null;
                  description = "File holding an OpenBao token (instead of AppRole).";
                  example = "/run/credentials/credproxy.service/openbao-token";
                };
              };
              kv_mount = mkOption {
                type = types.str;
                default = "secret";
                description = "Mount of the KV v2 engine.";
                example = "kv";
              };
              cache_ttl = mkOption {
                type = types.str;
                default = "30s";
                description = "How long a fetched secret is cached in memory.";
                example = "0s";
              };
            };
          });
        };
      };
      internal_services = mkOption {
        type = types.attrsOf (types.submodule {
          options.unix = mkOption {
            type = types.str;
            description = "The service's Unix socket (plain HTTP/1.1).";
            example = "/run/credproxy-hub/hub.sock";
          };
        });
        default = {};
        description = ''
          Internal names (also in `allowed_domains`) that credproxy routes to a local Unix socket
          after identity, policy and audit, with `x-credproxy-agent` set to the verified agent;
          never with a credential. The openclaw-containers module adds its hub here.
        '';
        example = {"hub.openclaw.internal".unix = "/run/credproxy-hub/hub.sock";};
      };
      credentials = mkOption {
        type = types.listOf credentialType;
        default = [];
        description = "Credentials the proxy may inject. The openclaw-vm module adds each VM's.";
        example = literalExpression ''
          [ {
            id = "anthropic";
            placeholder = "agent-vault-00000000-0000-0000-0000-000000000001";
            header_name = "x-api-key";
            bound_domains = [ "api.anthropic.com" ];
            source.openbao.path = "openclaw/credentials/anthropic";
          } ]
        '';
      };
      audit = mkOption {
        default = {};
        description = "Audit log (local, hash-chained) and its optional Temporal export.";
        example = {temporal.address = "127.0.0.1:7233";};
        type = types.submodule {
          freeformType = format.type;
          options = {
            path = mkOption {
              type = types.str;
              default = "${stateDir}/audit.db";
              description = "Local audit database.";
              example = "/var/lib/credproxy/audit.db";
            };
            temporal = mkOption {
              default = null;
              description = "Export audit records to Temporal.";
              example = {address = "127.0.0.1:7233";};
              type = types.nullOr (types.submodule {
                freeformType = format.type;
                options = {
                  address = mkOption {
                    type = types.str;
                    default = "127.0.0.1:7233";
                    description = "Temporal frontend (gRPC) address.";
                    example = "temporal.internal:7233";
                  };
                  namespace = mkOption {
                    type = types.str;
                    default = "default";
                    description = "Temporal namespace.";
                    example = "credproxy";
                  };
                  task_queue = mkOption {
                    type = types.str;
                    default = "credproxy";
                    description = "Task queue of the audit workflows.";
                    example = "credproxy";
                  };
                };
              });
            };
          };
        };
      };
      log = section "Logging." {level = "info";} {
        format = mkOption {
          type = types.enum ["json" "pretty"];
          default = "json";
          description = "Log format (journald keeps either).";
          example = "pretty";
        };
      };
    };
  };

  # Top-level sections left empty by the typed defaults are not rendered at all.
  rendered = lib.filterAttrs (_: v: v != {}) (cplib.stripNulls cfg.settings);

  configFile = pkgs.writeTextFile {
    name = "credproxy.yaml";
    text = builtins.toJSON rendered;
    # check-config reads only this text, not the files it names, so it runs in the sandbox.
    checkPhase = lib.optionalString cfg.validateConfig ''
      ${lib.getExe' cfg.package "credproxy"} check-config "$target"
    '';
  };

  servesBuiltinPolicy = cfg.settings.policy.dir == null || (cfg.settings.policy.dir == policyDir && !(cfg.policyFiles ? "authz.rego"));
  roleless = map (c: c.id) (lib.filter (c: c.allowed_roles == null || c.allowed_roles == []) cfg.settings.credentials);

  hasVsock = lib.any (l: l.vsock != null) cfg.settings.listeners;
  udsDirs = lib.unique (map (l: dirOf l.vsock_uds.path) (lib.filter (l: l.vsock_uds != null) cfg.settings.listeners));

  # What a reload (SIGHUP) applies: credentials, allowed domains, policy, log. Anything else
  # (listeners, identity, secrets, CA, upstream, audit, limits, admin) needs a restart.
  restartSections = builtins.removeAttrs rendered ["credentials" "allowed_domains" "policy" "log"];

  # The policy directory: the built-in default policy (from this source tree, the same files
  # the binary embeds) plus services.credproxy.policyFiles; a file of the same name replaces
  # a built-in one.
  builtinPolicy = {
    "authz.rego" = ../crates/policy/policy/authz.rego;
    "authz_test.rego" = ../crates/policy/policy/authz_test.rego;
  };
  policyDir = pkgs.runCommand "credproxy-policy" {} ''
    mkdir $out
    ${lib.concatStrings (lib.mapAttrsToList (n: f: ''
      cp ${f} $out/${lib.escapeShellArg n}
    '') (builtinPolicy // lib.mapAttrs (n: text: pkgs.writeText n text) cfg.policyFiles))}
  '';

  bao = lib.getExe' cfg.openbao.dev.package "bao";
  temporal = lib.getExe' cfg.temporal.dev.package "temporal";

  # The hardening every unit of this module shares (house-style §7, nixpkgs openbao.nix).
  hardening =
    cplib.hardening.service
    // {
      SystemCallFilter = ["@system-service" "~@privileged" "~@resources"];
    };
in {
  options.services.credproxy = {
    enable = lib.mkEnableOption "credproxy, the credential-injecting egress proxy for AI agents";

    package = lib.mkPackageOption pkgs "credproxy" {
      extraDescription = "The flake's `nixosModules.credproxy` sets this to its own build.";
    };

    settings = mkOption {
      type = settingsType;
      default = {};
      description = ''
        credproxy configuration (see docs/configuration.md), rendered to
        {option}`services.credproxy.configFile`. Well-known keys are typed; any other key
        is passed through. Secrets are referenced by path only.
      '';
      example = literalExpression ''
        {
          listeners = [ { name = "local"; tcp = "127.0.0.1:18790"; } ];
          allowed_domains = [ "api.anthropic.com" ];
        }
      '';
    };

    policyFiles = mkOption {
      type = types.attrsOf types.lines;
      default = {};
      description = ''
        Rego files (name -> text, package `credproxy.authz`) served together with the built-in
        default policy. When any is set, {option}`services.credproxy.settings.policy.dir`
        defaults to a directory holding `authz.rego` (the built-in policy, unless a file of
        that name is given here) and these files; `*_test.rego` files are only run by
        `credproxy policy test`. The openclaw-vm module adds its per-VM rules here.
      '';
      example = {"deny-uploads.rego" = "package credproxy.authz\n\ndeny_reasons contains \"no uploads\" if input.request.method == \"PUT\"\n";};
    };

    policyDirectory = mkOption {
      type = types.path;
      readOnly = true;
      default = policyDir;
      defaultText = literalExpression "the built-in policy plus services.credproxy.policyFiles";
      description = "The policy directory built from {option}`services.credproxy.policyFiles`.";
      example = "/nix/store/...-credproxy-policy";
    };

    validateConfig = mkOption {
      type = types.bool;
      default = true;
      description = "Run `credproxy check-config` on the generated file at build time.";
      example = false;
    };

    configFile = mkOption {
      type = types.path;
      readOnly = true;
      default = configFile;
      defaultText = literalExpression "the checked rendering of services.credproxy.settings";
      description = "The generated configuration file (also linked to /etc/credproxy/config.yaml).";
      example = "/nix/store/...-credproxy.yaml";
    };

    loadCredential = mkOption {
      type = types.attrsOf secretFile;
      default = {};
      description = ''
        Files passed to the service with systemd `LoadCredential=NAME:PATH`; refer to them in
        {option}`services.credproxy.settings` as `/run/credentials/credproxy.service/NAME`.
        The source file may be owned by root with mode 0400.
      '';
      example = {
        secret-id = "/run/secrets/credproxy-secret-id";
        role-id = "/run/secrets/credproxy-role-id";
      };
    };

    credentialsDirectory = mkOption {
      type = types.str;
      default = "/run/credentials/credproxy.service";
      internal = true;
      description = ''
        Where systemd puts the {option}`services.credproxy.loadCredential` files for the
        service; modules refer to them there. Changed only to run the generated configuration
        outside systemd (the microVM test plays systemd's part).
      '';
      example = "/run/credentials/credproxy.service";
    };

    ca = {
      generate = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Create the MITM CA with `credproxy ca init` in ${stateDir}/ca when it does not
          exist (key 0400, owned by the service user). Set to false to bring your own
          {option}`services.credproxy.settings.ca` files.
        '';
        example = false;
      };
      publicCertificate = mkOption {
        type = types.str;
        readOnly = true;
        default = "${publicDir}/ca.crt";
        description = ''
          World-readable copy of the CA certificate (only the certificate) that agent
          VMs are given. Refreshed each time credproxy starts.
        '';
        example = "${publicDir}/ca.crt";
      };
    };

    temporal.dev = {
      enable = lib.mkEnableOption "a Temporal development server (persistent SQLite database) for the audit export";
      package = lib.mkPackageOption pkgs "temporal-cli" {};
      port = mkOption {
        type = types.port;
        default = 7233;
        description = "gRPC frontend port (127.0.0.1).";
        example = 7233;
      };
      uiPort = mkOption {
        type = types.nullOr types.port;
        default = null;
        description = "Web UI port on 127.0.0.1; null runs headless.";
        example = 8233;
      };
      searchAttributes = mkOption {
        type = types.attrsOf (types.enum ["Keyword" "Text" "Int" "Double" "Bool" "Datetime" "KeywordList"]);
        default = {
          CredProxyAgentID = "Keyword";
          CredProxyTargetDomain = "Keyword";
          CredProxyCredentialRef = "Keyword";
          CredProxyStatus = "Keyword";
        };
        description = ''
          Custom search attributes registered after every start ("already exists" is
          success), so the audit workflows never fail on an unknown attribute.
        '';
        example = {CredProxyAgentID = "Keyword";};
      };
    };

    openbao.dev = {
      enable = lib.mkEnableOption ''
        an OpenBao development server (in memory, 127.0.0.1 only) and a oneshot that runs
        `credproxy openbao provision` whenever it (re)starts. Development only'';
      package = lib.mkPackageOption pkgs "openbao" {};
      port = mkOption {
        type = types.port;
        default = 8200;
        description = "API port on 127.0.0.1 (OpenBao also binds port + 1 for clustering).";
        example = 8210;
      };
      seed = mkOption {
        type = types.attrsOf (types.attrsOf types.str);
        default = {};
        description = ''
          Dummy KV entries written on every provisioning (`credproxy openbao provision --seed`),
          keyed by path.
          These values are in the Nix store: use only fake credentials here.
        '';
        example = {"openclaw/credentials/httpbin" = {key = "dummy-httpbin-key";};};
      };
      provisionArgs = mkOption {
        type = types.listOf types.str;
        default =
          [
            "--address"
            "http://127.0.0.1:${toString cfg.openbao.dev.port}"
            "--admin-token-file"
            "${openbaoStateDir}/root-token"
            "--config"
            "${configFile}"
            "--role-name"
            "credproxy"
            "--out-dir"
            "${stateDir}/openbao"
          ]
          ++ lib.optionals (cfg.openbao.dev.seed != {}) [
            "--seed"
            "${pkgs.writeText "credproxy-openbao-dev-seed.json" (builtins.toJSON cfg.openbao.dev.seed)}"
          ];
        defaultText = literalExpression ''[ "--address" "http://127.0.0.1:''${port}" "--admin-token-file" ROOT_TOKEN "--config" CONFIG "--role-name" "credproxy" "--out-dir" "/var/lib/credproxy/openbao" ] ++ [ "--seed" SEED_JSON ]'';
        description = "Arguments of `credproxy openbao provision` (run as root, after the dev server answers).";
        example = ["--address" "http://127.0.0.1:8200" "--token-file" "/var/lib/credproxy-openbao-dev/root-token"];
      };
    };
  };

  config = lib.mkIf cfg.enable (lib.mkMerge [
    {
      assertions =
        cplib.secretPathAssertions (
          cplib.configSecretFiles rendered
          ++ lib.mapAttrsToList (n: v: {
            what = "services.credproxy.loadCredential.${n}";
            value = v;
          })
          cfg.loadCredential
        )
        ++ lib.imap0 (i: l: {
          assertion = lib.length (lib.filter (x: x != null) [l.tcp l.unix l.vsock l.vsock_uds]) == 1;
          message = "services.credproxy.settings.listeners[${toString i}] (${l.name}) needs exactly one of tcp, unix, vsock, vsock_uds.";
        })
        cfg.settings.listeners
        ++ lib.concatLists (lib.imap0 (i: l: let
          at = "services.credproxy.settings.listeners[${toString i}] (${l.name})";
          t = l.agent_token;
        in
          lib.optionals (t != null) [
            {
              assertion = l.agent != null;
              message = "${at}: agent_token needs `agent` (the identity the proxy obtains a token for).";
            }
            {
              assertion = (l.vsock != null && l.vsock.peer_cid != null) || l.vsock_uds != null || l.unix != null;
              message = "${at}: agent_token only on a listener that identifies its peer: vsock with peer_cid, vsock_uds, or unix (a TCP listener or a vsock listener without peer_cid would hand the agent's token to anyone who connects).";
            }
            {
              assertion = l.unix == null || l.peer_uids != null;
              message = "${at}: agent_token on a unix listener needs peer_uids (the uids that may connect, checked with SO_PEERCRED); without it every process that can open the socket would act as the agent.";
            }
            {
              assertion = (t.client_credentials != null) != (t.dev_issuer != null);
              message = "${at}: agent_token needs exactly one of client_credentials, dev_issuer.";
            }
            {
              assertion = t.client_credentials == null || ((t.client_credentials.token_url != null) != (t.client_credentials.issuer != null));
              message = "${at}: agent_token.client_credentials needs exactly one of token_url, issuer.";
            }
          ])
        cfg.settings.listeners)
        ++ lib.imap0 (i: c: {
          assertion = lib.length (lib.filter (x: x != null) [c.source.openbao c.source.file c.source.env]) == 1;
          message = "services.credproxy.settings.credentials[${toString i}] (${c.id}): source needs exactly one of openbao, file, env.";
        })
        cfg.settings.credentials
        ++ [
          {
            assertion = !servesBuiltinPolicy || roleless == [];
            message = ''
              services.credproxy.settings.credentials: ${lib.concatStringsSep ", " roleless} ${
                if lib.length roleless == 1
                then "has"
                else "have"
              } no allowed_roles, and no role may use it: the built-in
              default policy refuses every use. List the roles allowed to use each credential (or serve a
              policy of your own as services.credproxy.policyFiles."authz.rego").
            '';
          }
          {
            assertion = cfg.settings.listeners != [];
            message = "services.credproxy: at least one listener is required (services.credproxy.settings.listeners).";
          }
          {
            assertion = lib.all (c: c.source.openbao == null) cfg.settings.credentials || cfg.settings.secrets.openbao != null;
            message = "services.credproxy: a credential reads from OpenBao but services.credproxy.settings.secrets.openbao is not set.";
          }
          {
            assertion = let
              ports = map (l: l.vsock.port) (lib.filter (l: l.vsock != null) cfg.settings.listeners);
            in
              lib.length ports == lib.length (lib.unique ports);
            message = "services.credproxy: two AF_VSOCK listeners use the same port; give each VM its own proxy port.";
          }
        ];

      users.users.credproxy = {
        isSystemUser = true;
        group = "credproxy";
        description = "credproxy egress proxy";
      };
      users.groups.credproxy = {};

      environment.etc."credproxy/config.yaml".source = configFile;
      # `credproxy check-config`, `credproxy audit`, `credproxy policy test` for the operator.
      environment.systemPackages = [cfg.package];

      services.credproxy.settings.policy.dir = lib.mkIf (cfg.policyFiles != {}) (lib.mkDefault policyDir);

      systemd.tmpfiles.rules = [
        "d ${publicDir} 0755 credproxy credproxy - -"
      ];

      systemd.services.credproxy-ca-init = {
        description = "credproxy: create the MITM CA if missing, publish its certificate";
        wantedBy = ["multi-user.target"];
        before = ["credproxy.service"];
        path = [cfg.package pkgs.coreutils];
        script = ''
          ca=${lib.escapeShellArg (dirOf cfg.settings.ca.cert_file)}
          cert=${lib.escapeShellArg cfg.settings.ca.cert_file}
          key=${lib.escapeShellArg cfg.settings.ca.key_file}
          ${lib.optionalString cfg.ca.generate ''
            if [ ! -e "$cert" ] && [ ! -e "$key" ]; then
              credproxy ca init --dir "$ca"
            elif [ ! -e "$cert" ] || [ ! -e "$key" ]; then
              echo "credproxy-ca-init: half a CA in $ca (one of ca.crt, ca.key is missing); refusing to guess" >&2
              exit 1
            fi
          ''}
          # Only the certificate leaves the state directory.
          install -m 0444 "$cert" ${publicDir}/ca.crt.new
          mv -f ${publicDir}/ca.crt.new ${publicDir}/ca.crt
        '';
        serviceConfig =
          hardening
          // {
            Type = "oneshot";
            RemainAfterExit = true;
            User = "credproxy";
            Group = "credproxy";
            StateDirectory = "credproxy";
            StateDirectoryMode = "0750";
            ReadWritePaths = [publicDir];
            RestrictAddressFamilies = "none";
            PrivateNetwork = true;
          };
      };

      systemd.services.credproxy = {
        description = "credproxy credential-injecting egress proxy";
        wantedBy = ["multi-user.target"];
        after = ["network-online.target" "credproxy-ca-init.service"];
        wants = ["network-online.target"];
        requires = ["credproxy-ca-init.service"];
        # Config edits that a reload applies (credentials, allowlist, policy, log) reload
        # (SIGHUP), so agent tunnels survive; anything else restarts: credproxy does not
        # apply new listeners, identity or secrets on reload.
        reloadTriggers = [configFile];
        restartTriggers = [cfg.package (builtins.toJSON restartSections)];
        startLimitIntervalSec = 300;
        startLimitBurst = 5;
        serviceConfig =
          hardening
          // {
            Type = "notify";
            NotifyAccess = "main";
            ExecStart = "${lib.getExe' cfg.package "credproxy"} serve --config /etc/credproxy/config.yaml";
            ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
            Restart = "on-failure";
            RestartSec = 5;
            RestartSteps = 5;
            RestartMaxDelaySec = 60;
            User = "credproxy";
            Group = "credproxy";
            StateDirectory = "credproxy";
            StateDirectoryMode = "0750";
            RuntimeDirectory = "credproxy";
            RuntimeDirectoryMode = "0750";
            LoadCredential = lib.mapAttrsToList (n: p: "${n}:${p}") cfg.loadCredential;
            # "-": the VM's state directory may not exist yet; the listener then fails loudly.
            ReadWritePaths = map (d: "-${d}") udsDirs;
            RestrictAddressFamilies = ["AF_UNIX" "AF_INET" "AF_INET6"] ++ lib.optional hasVsock "AF_VSOCK";
            MemoryDenyWriteExecute = true;
            LimitNOFILE = 65536;
          };
      };

      boot.kernelModules = lib.mkIf hasVsock ["vhost_vsock"];
    }

    (lib.mkIf cfg.temporal.dev.enable {
      services.credproxy.settings.audit.temporal = lib.mkDefault {
        address = "127.0.0.1:${toString cfg.temporal.dev.port}";
      };

      systemd.services.credproxy-temporal-dev = {
        description = "Temporal development server for credproxy's audit export";
        wantedBy = ["multi-user.target"];
        before = ["credproxy.service"];
        requiredBy = ["credproxy.service"];
        path = [cfg.temporal.dev.package];
        serviceConfig =
          hardening
          // {
            ExecStart = lib.escapeShellArgs ([
                temporal
                "server"
                "start-dev"
                "--ip"
                "127.0.0.1"
                "--port"
                (toString cfg.temporal.dev.port)
                "--http-port"
                (toString (cfg.temporal.dev.port + 10))
                "--metrics-port"
                (toString (cfg.temporal.dev.port + 11))
                "--db-filename"
                "${temporalStateDir}/temporal.db"
                "--log-format"
                "json"
              ]
              ++ (
                if cfg.temporal.dev.uiPort == null
                then ["--headless"]
                else ["--ui-port" (toString cfg.temporal.dev.uiPort)]
              ));
            # Search attributes on a persistent database must be registered through the
            # operator API ("--search-attribute" only applies to a fresh database).
            ExecStartPost = pkgs.writeShellScript "credproxy-temporal-search-attributes" ''
              for _ in $(seq 1 60); do
                ${temporal} operator cluster health --address 127.0.0.1:${toString cfg.temporal.dev.port} >/dev/null 2>&1 && break
                sleep 1
              done
              ${lib.concatStrings (lib.mapAttrsToList (n: t: ''
                  out=$(${temporal} operator search-attribute create --address 127.0.0.1:${toString cfg.temporal.dev.port} \
                    --namespace ${lib.escapeShellArg (
                    if cfg.settings.audit.temporal == null
                    then "default"
                    else cfg.settings.audit.temporal.namespace
                  )} \
                    --name ${lib.escapeShellArg n} --type ${t} 2>&1) || case "$out" in
                    *"already exists"*) ;;
                    *) echo "$out" >&2; exit 1 ;;
                  esac
                '')
                cfg.temporal.dev.searchAttributes)}
            '';
            DynamicUser = true;
            StateDirectory = "credproxy-temporal";
            StateDirectoryMode = "0700";
            Restart = "on-failure";
            RestartSec = 5;
            TimeoutStopSec = 15;
            RestrictAddressFamilies = ["AF_UNIX" "AF_INET" "AF_INET6"];
            # The Go runtime and its SQLite driver need neither; both are fine without.
            MemoryDenyWriteExecute = true;
          };
      };
    })

    (lib.mkIf cfg.openbao.dev.enable {
      warnings = [
        ''
          services.credproxy.openbao.dev is enabled: an in-memory OpenBao dev server with a root
          token on this host, re-provisioned on every restart. Never use this for real secrets.
        ''
      ];

      services.credproxy.settings.secrets.openbao = lib.mkDefault {
        address = "http://127.0.0.1:${toString cfg.openbao.dev.port}";
        auth.approle = {
          role_id_file = "${stateDir}/openbao/role_id";
          secret_id_file = "${stateDir}/openbao/secret_id";
        };
      };

      users.users.credproxy-openbao = {
        isSystemUser = true;
        group = "credproxy-openbao";
        description = "credproxy OpenBao dev server";
      };
      users.groups.credproxy-openbao = {};

      systemd.services.credproxy-openbao-dev = {
        description = "OpenBao development server for credproxy (in memory)";
        wantedBy = ["multi-user.target"];
        # The root token is generated at run time and never enters the store or the guests.
        script = ''
          umask 0077
          if [ ! -s ${openbaoStateDir}/root-token ]; then
            head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > ${openbaoStateDir}/root-token
          fi
          chmod 0440 ${openbaoStateDir}/root-token
          BAO_DEV_ROOT_TOKEN_ID=$(cat ${openbaoStateDir}/root-token)
          export BAO_DEV_ROOT_TOKEN_ID
          exec ${bao} server -dev -dev-listen-address=127.0.0.1:${toString cfg.openbao.dev.port}
        '';
        path = [pkgs.coreutils];
        serviceConfig =
          hardening
          // {
            User = "credproxy-openbao";
            Group = "credproxy-openbao";
            StateDirectory = "credproxy-openbao-dev";
            StateDirectoryMode = "0750";
            Restart = "on-failure";
            RestartSec = 5;
            RestrictAddressFamilies = ["AF_UNIX" "AF_INET" "AF_INET6"];
            # OpenBao wants to mlock; the dev server runs without it.
            Environment = ["BAO_DISABLE_MLOCK=true" "HOME=${openbaoStateDir}"];
          };
      };

      # Provisioning is part of the dev server: a restart of OpenBao (which loses everything)
      # restarts this oneshot (PartOf), and starting OpenBao starts it (WantedBy).
      systemd.services.credproxy-openbao-provision = {
        description = "credproxy: provision the OpenBao dev server (KV v2, read-only policy, AppRole, dummy credentials)";
        wantedBy = ["credproxy-openbao-dev.service" "multi-user.target"];
        partOf = ["credproxy-openbao-dev.service"];
        requires = ["credproxy-openbao-dev.service"];
        after = ["credproxy-openbao-dev.service"];
        before = ["credproxy.service"];
        path = [cfg.package cfg.openbao.dev.package pkgs.coreutils];
        environment = {
          BAO_ADDR = "http://127.0.0.1:${toString cfg.openbao.dev.port}";
          HOME = "/run/credproxy-openbao-provision";
        };
        script = ''
          set -euo pipefail
          ok=
          for _ in $(seq 1 60); do
            if bao status >/dev/null 2>&1; then ok=1; break; fi
            sleep 1
          done
          if [ -z "$ok" ]; then
            echo "credproxy-openbao-provision: OpenBao did not answer within 60 s" >&2
            exit 1
          fi
          install -d -m 0700 -o credproxy -g credproxy ${stateDir}/openbao
          credproxy openbao provision ${lib.escapeShellArgs cfg.openbao.dev.provisionArgs}
          chown credproxy:credproxy ${stateDir}/openbao/role_id ${stateDir}/openbao/secret_id
          chmod 0400 ${stateDir}/openbao/role_id ${stateDir}/openbao/secret_id
        '';
        serviceConfig =
          hardening
          // {
            Type = "oneshot";
            RemainAfterExit = true;
            # Root only to write the AppRole files into credproxy's state; no capabilities
            # beyond chown.
            CapabilityBoundingSet = ["CAP_CHOWN" "CAP_FOWNER" "CAP_DAC_OVERRIDE"];
            SystemCallFilter = ["@system-service" "@chown" "~@resources"];
            SupplementaryGroups = ["credproxy-openbao"];
            RuntimeDirectory = "credproxy-openbao-provision";
            ReadWritePaths = [stateDir];
            RestrictAddressFamilies = ["AF_UNIX" "AF_INET" "AF_INET6"];
            MemoryDenyWriteExecute = true;
          };
      };

      # A fresh dev server means fresh AppRole credentials: restart the proxy with it.
      systemd.services.credproxy = {
        after = ["credproxy-openbao-provision.service"];
        wants = ["credproxy-openbao-provision.service"];
        partOf = ["credproxy-openbao-provision.service"];
      };
    })
  ]);
}
