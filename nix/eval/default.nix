# The evaluation harness (scripts/check-nix runs it through nix/eval/run): evaluates the
# flake's outputs and the project's NixOS modules over nixpkgs' real `lib` and microvm.nix's
# real options (both vendored, see ../shared/vendor/README.md), with stand-ins for the
# nixpkgs options and packages (nix/eval/nixos.nix, nix/eval/pkgs.nix).
#
#   nix-instantiate --read-write-mode --eval --strict --json nix/eval -A report \
#     --arg vendor ../shared/vendor --argstr credproxyPrefix DIR
#
# `report` is JSON for nix/eval/run, which realises what it lists (configs, scripts, policy
# directories, the hosts' top levels) and runs it with the real binary. Every case is
# evaluated under tryEval; `raw.<case>` evaluates one without it, to see the error.
{
  vendor ? ../../../shared/vendor,
  credproxyPrefix ? null,
  # Parameters of the microVM test's host (nix/eval/test-host.nix; the `testHost` attribute).
  runDir ? "/run/credproxy-microvm-test",
  issuer ? "http://127.0.0.1:1",
  upstreamCa ? "/dev/null",
  upstreamAddr ? "127.0.0.1:1",
  gatewayHostPort ? "0",
}: let
  root = ../..;
  h = import ./lib.nix {inherit vendor credproxyPrefix;};
  inherit (h) lib;
  flake = h.flake root;
  hosts = import ./hosts.nix {inherit lib;};
  cases = import ./cases.nix {inherit lib hosts flake;};

  hostModules = [h.microvmHost flake.nixosModules.default];
  evalHost = modules: h.evalNixos {modules = hostModules ++ modules;};

  # Everything the runner needs from one evaluated host (or guest).
  report = c: let
    cfg = c.config;
    s = cfg.system.build.summary;
    cp = cfg.services.credproxy or {enable = false;};
    vms = cfg.microvm.vms or {};
  in
    s
    // {
      toplevel =
        if s.failedAssertions == []
        then cfg.system.build.toplevel.drvPath
        else null;
      credproxy =
        if cp.enable
        then {
          configFile = toString cp.configFile;
          configDrv = cp.configFile.drvPath;
          settings = builtins.fromJSON (builtins.unsafeDiscardStringContext cp.configFile.text);
          policyDir =
            if cp.policyFiles != {}
            then {
              path = toString cp.policyDirectory;
              drv = cp.policyDirectory.drvPath;
            }
            else null;
          loadCredential = cp.loadCredential;
          restartTriggers = s.services.credproxy.restartTriggers;
          reloadTriggers = s.services.credproxy.reloadTriggers;
        }
        else null;
      # services.openclaw-containers: what nix/eval/run checks of the containers.
      containers = let
        oc = cfg.services.openclaw-containers or {enable = false;};
      in
        if oc.enable
        then {
          seccompProfile = toString oc.seccompProfile;
          seccompDrv = oc.seccompProfile.drvPath;
          inherit (oc) imageRef;
          image = {
            inherit (oc.image) imageName imageTag;
            args = builtins.removeAttrs oc.image.imageArgs ["contents"];
            contents = map (p: p.pname or p.name or (toString p)) oc.image.imageArgs.contents;
          };
          instances =
            lib.mapAttrs (n: i: {
              execStart = s.services."openclaw-container-${n}".serviceConfig.ExecStart;
              inherit (i) podmanArgs uid subUidStart agentId command;
              proxyDir = "${oc.runtimeDir}/${n}/proxy";
            })
            (lib.filterAttrs (_: i: i.enable) oc.instances);
        }
        else null;
      guests = lib.mapAttrs (_: vm: let
        g = vm.config.config;
      in
        report vm.config
        // {
          runner = g.microvm.declaredRunner.standInRunner;
          proxyEnvironment = g.services.credproxy-guest.environment or {};
          openclaw =
            if g.services.openclaw-guest.enable or false
            then {
              settings = g.services.openclaw-guest.settings;
              toolPackages = map (p: p.pname or p.name) g.services.openclaw-guest.toolPackages;
            }
            else null;
        })
      vms;
    };

  # A host's failed assertions and its guests' (a guest's fail its top level, which the
  # host's install unit needs, as with microvm.nix).
  failedAssertions = c:
    c.config.system.build.summary.failedAssertions
    ++ lib.concatLists (lib.mapAttrsToList (n: vm: map (m: "guest ${n}: ${m}") vm.config.config.system.build.summary.failedAssertions) (c.config.microvm.vms or {}));

  guarded = x: let
    r = builtins.tryEval (builtins.deepSeq x x);
  in
    if r.success
    then r.value
    else {evalError = true;};

  hostCases = lib.mapAttrs (_: modules: evalHost modules) cases.hosts;
  assertionCases = lib.mapAttrs (_: a:
    if a.noMicrovm or false
    then h.evalNixos {modules = [flake.nixosModules.default] ++ a.modules;}
    else evalHost a.modules)
  cases.assertions;

  # The NixOS tests' node configurations, as pkgs.testers.runNixOSTest would evaluate them.
  nixosTests = lib.mapAttrs (_: t: h.evalTest t.nixosTest) (lib.filterAttrs (_: v: v ? nixosTest) flake.checks.x86_64-linux);

  flakeOutputs = {
    packages = lib.mapAttrs (_: ps: lib.mapAttrs (_: p: p.name) ps) flake.packages;
    packageSrc = toString flake.packages.x86_64-linux.credproxy.src;
    nixosModules = lib.attrNames flake.nixosModules;
    nixosConfigurations = lib.mapAttrs (_: c: c.config.system.build.toplevel.drvPath) flake.nixosConfigurations;
    checks = lib.mapAttrs (_: cs:
      lib.mapAttrs (_: c:
        if c ? nixosTest
        then "nixos-test ${c.name}"
        else if c ? drvPath
        then c.drvPath
        else c.name)
      cs)
    flake.checks;
    # Derivations to build here (their builders need only /bin/sh and coreutils).
    buildable = [flake.checks.x86_64-linux.nftables-ruleset.drvPath flake.checks.x86_64-linux.eval-test-vm.drvPath flake.checks.x86_64-linux.eval-test-vm-guest.drvPath];
    devShells = lib.mapAttrs (_: d: d.default.name) flake.devShells;
    formatter = lib.mapAttrs (_: f: f.name) flake.formatter;
    overlay = (flake.overlays.default (h.pkgsFor "x86_64-linux") (h.pkgsFor "x86_64-linux")).credproxy.name;
    test-vm = report flake.nixosConfigurations.test-vm;
  };
in {
  report = {
    flake = guarded flakeOutputs;
    hosts = lib.mapAttrs (_: c: guarded (report c)) hostCases;
    assertions = lib.mapAttrs (n: c:
      guarded {
        expect = cases.assertions.${n}.expect;
        failed = failedAssertions c;
      })
    assertionCases;
    nixosTests = lib.mapAttrs (_: t:
      guarded {
        nodes = lib.mapAttrs (_: report) t.nodes;
        inherit (t) testScript;
      })
    nixosTests;
    checks = guarded (cases.checks {
      hosts = lib.mapAttrs (_: report) hostCases;
      inherit evalHost report flake nixosTests;
    });
  };

  # What crates/bridge/tests/microvm.rs runs: the test host, evaluated with its parameters.
  testHost = let
    c = evalHost [
      (import ./test-host.nix {
        inherit runDir issuer upstreamCa upstreamAddr;
        gatewayHostPort = lib.toInt gatewayHostPort;
      })
    ];
    r = report c;
    cp = c.config.services.credproxy;
    # Generated Exec lines are escapeShellArgs of plain words here; refuse anything quoted.
    argv = line:
      if lib.hasInfix "'" line
      then throw "nix/eval: cannot split the quoted command line ${line}"
      else lib.filter (w: w != "") (lib.splitString " " line);
    vmInfo = name: let
      vm = c.config.services.openclaw-vm.vms.${name};
      g = r.guests.${name};
      listener = lib.findFirst (l: l.name == "vm-${name}") null r.credproxy.settings.listeners;
    in {
      inherit (vm) cid agentId;
      inherit listener;
      clientId = vm.identity.clientId;
      clientSecretFile = vm.identity.clientSecretFile;
      vhostDeviceVsock = argv r.services."openclaw-vm-${name}-vhost-vsock".serviceConfig.ExecStart;
      qemuArgs = g.runner.qemuExtraArgs;
      guestBridge = argv g.services.credproxy-bridge.serviceConfig.ExecStart;
      # Host -> guest gateway: the host's bridge, the guest's VSOCK listener, the gateway port.
      hostGatewayBridge =
        if r.services ? "openclaw-vm-${name}-gateway"
        then argv r.services."openclaw-vm-${name}-gateway".serviceConfig.ExecStart
        else null;
      guestGatewayBridge =
        if g.services ? openclaw-gateway-vsock
        then argv g.services.openclaw-gateway-vsock.serviceConfig.ExecStart
        else null;
      gatewayPort = c.config.microvm.vms.${name}.config.config.services.openclaw-guest.settings.gateway.port;
      environment = g.proxyEnvironment;
      placeholders = lib.mapAttrs (_: cr: cr.placeholder) vm.credentials;
      inherit (vm) placeholderEnvironment;
      # The directories the host's tmpfiles rules create for this VM.
      directories = map (rule: builtins.elemAt (lib.splitString " " rule) 1) (lib.filter (rule: lib.hasInfix "/${name}" rule && lib.hasPrefix "d ${runDir}/" rule) r.tmpfiles);
    };
  in
    if r.failedAssertions != []
    then throw "nix/eval: the test host has failed assertions:\n${lib.concatStringsSep "\n" r.failedAssertions}"
    else {
      # The generated config's text (the file's build also runs check-config, which needs
      # the credproxy binary; the test validates it with the same code as it loads it).
      config = {
        inherit (r.credproxy) configFile;
        text = builtins.unsafeDiscardStringContext cp.configFile.text;
      };
      inherit (r.credproxy) policyDir loadCredential;
      inherit (cp) credentialsDirectory;
      vms = lib.genAttrs ["a" "b"] vmInfo;
    };

  # What crates/cli/tests/containers.rs runs: the container test host, with its parameters.
  containerTestHost = let
    c = h.evalNixos {
      modules = [
        flake.nixosModules.default
        (import ./container-test-host.nix {
          inherit runDir issuer upstreamCa upstreamAddr;
          gatewayHostPort = lib.toInt gatewayHostPort;
        })
      ];
    };
    r = report c;
    cp = c.config.services.credproxy;
    oc = c.config.services.openclaw-containers;
    # Generated Exec lines are escapeShellArgs of plain words here; refuse anything quoted.
    argv = line:
      if lib.hasInfix "'" line
      then throw "nix/eval: cannot split the quoted command line ${line}"
      else lib.filter (w: w != "") (lib.splitString " " line);
    instanceInfo = name: let
      i = oc.instances.${name};
      listener = lib.findFirst (l: l.name == "container-${name}") null r.credproxy.settings.listeners;
      hostBridge = unit:
        if r.services ? ${unit}
        then argv r.services.${unit}.serviceConfig.ExecStart
        else null;
    in {
      inherit (i) uid subUidStart agentId podmanArgs placeholderEnvironment user group;
      inherit listener;
      openclawSettings = i.openclaw.settings;
      clientId = i.identity.clientId;
      clientSecretFile = i.identity.clientSecretFile;
      placeholders = lib.mapAttrs (_: cr: cr.placeholder) i.credentials;
      gatewayBridge = hostBridge "openclaw-container-${name}-gateway";
      # The directories the host's tmpfiles rules create for this instance, with their modes.
      directories = map (rule: let
        f = lib.splitString " " rule;
      in {
        path = builtins.elemAt f 1;
        mode = builtins.elemAt f 2;
        user = builtins.elemAt f 3;
        group = builtins.elemAt f 4;
      }) (lib.filter (rule: lib.hasPrefix "d " rule && lib.hasInfix "/${name}" rule && lib.hasInfix runDir rule) r.tmpfiles);
    };
  in
    if r.failedAssertions != []
    then throw "nix/eval: the container test host has failed assertions:\n${lib.concatStringsSep "\n" r.failedAssertions}"
    else {
      config = {
        inherit (r.credproxy) configFile;
        text = builtins.unsafeDiscardStringContext cp.configFile.text;
      };
      inherit (r.credproxy) policyDir loadCredential;
      inherit (cp) credentialsDirectory;
      seccomp = {
        path = toString oc.seccompProfile;
        drv = oc.seccompProfile.drvPath;
      };
      entrypoint = builtins.readFile ../../modules/openclaw-containers/entrypoint.sh;
      inherit (oc) imageRef proxyPort;
      hub = argv r.services.credproxy-hub.serviceConfig.ExecStart;
      instances = lib.genAttrs ["a" "b"] instanceInfo;
    };

  # Unguarded, to see an evaluation error: nix-instantiate ... -A raw.hosts.three-vms
  raw = {
    flake = flakeOutputs;
    hosts = lib.mapAttrs (_: report) hostCases;
    assertions = lib.mapAttrs (_: failedAssertions) assertionCases;
    nixosTests = lib.mapAttrs (_: t: lib.mapAttrs (_: report) t.nodes) nixosTests;
  };
}
