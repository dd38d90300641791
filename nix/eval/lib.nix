# The evaluation harness's machinery: nixpkgs' real `lib` (vendored), the stand-in package
# set and NixOS options, microvm.nix's real host options and guest options/assertions, and a
# `lib.evalModules` wrapper that evaluates a NixOS configuration the way nixosSystem would.
{
  # The vendored tree: nixpkgs-lib/ and microvm.nix/ (see its README).
  vendor,
  # A directory with bin/credproxy, or null.
  credproxyPrefix ? null,
}: let
  # Nix 2.8 (Debian's nix-bin) lacks builtins.readFileType, which lib.fileset calls. Import
  # nixpkgs' lib (and the package expression) through a scope that adds it.
  bi =
    builtins
    // {
      readFileType = builtins.readFileType or (p: (builtins.readDir (dirOf p)).${baseNameOf p});
    };
  scope = {
    builtins = bi;
    import = p: builtins.scopedImport scope p;
  };
  scopedImport = p: builtins.scopedImport scope p;

  lib = scopedImport (vendor + "/nixpkgs-lib/lib");
  microvmSrc = vendor + "/microvm.nix";
  nixpkgsPath = ./nixpkgs;

  pkgsFor = system: let
    base = import ./pkgs.nix {inherit lib system credproxyPrefix nixpkgsPath;};
  in
    base
    // {
      standIn =
        base.standIn
        // {
          inherit evalNixos microvmSrc guestModule;
        };
      callPackage = fn: args: let
        f =
          if builtins.isFunction fn
          then fn
          else scopedImport fn;
      in
        f ((builtins.intersectAttrs (builtins.functionArgs f) (pkgsFor system)) // args);
    };

  # microvm.nix's guest side as far as the host's evaluation needs it: its real options and
  # assertions, and a stand-in for the runner (the hypervisor command line is microvm.nix's
  # business; what it needs from our modules is recorded, and its refusals are mirrored).
  guestModule = {
    config,
    lib,
    pkgs,
    ...
  }: let
    m = config.microvm;
    hv = m.hypervisor;
    refuse = msg: throw "microvm.nix (lib/runners/${hv}.nix) would refuse this VM: ${msg}";
    runner = pkgs.standIn.package "microvm-${hv}-${config.networking.hostName}" {
      supportsNotifySocket = false;
      registerWithMachined = false;
      standInRunner =
        if hv == "cloud-hypervisor" && m.credentialFiles != {}
        then refuse "cloud-hypervisor does not support credentialFiles"
        else if hv == "cloud-hypervisor" && m.user != null
        then refuse "cloud-hypervisor will not change user"
        else if hv == "firecracker" && m.credentialFiles != {}
        then refuse "credentialFiles are not implemented for Firecracker"
        else if hv == "firecracker" && m.shares != []
        then refuse "9p/virtiofs shares not implemented for Firecracker"
        else {
          inherit (m) hypervisor vcpu mem credentialFiles kernelParams;
          vsockCid = m.vsock.cid;
          interfaces = map (i: {inherit (i) type id mac;}) m.interfaces;
          volumes = map (v: {inherit (v) image mountPoint size label fsType autoCreate;}) m.volumes;
          shares = map (s: {inherit (s) tag source mountPoint proto readOnly;}) m.shares;
          qemuExtraArgs = m.qemu.extraArgs;
          qemuSerialConsole = m.qemu.serialConsole;
          cloudHypervisorExtraArgs = m.cloud-hypervisor.extraArgs;
          firecrackerVsock = (m.firecracker.extraConfig.vsock or {}) // {guest_cid = m.vsock.cid;};
          toplevel = config.system.build.toplevel;
        };
    };
  in {
    imports = [
      (microvmSrc + "/nixos-modules/microvm/options.nix")
      (microvmSrc + "/nixos-modules/microvm/asserts.nix")
    ];
    config.microvm.runner.${hv} = runner;
  };

  # Evaluate a NixOS configuration over the stand-ins. `prefix` as nixpkgs' eval-config.
  evalNixos = {
    modules,
    system ? "x86_64-linux",
    specialArgs ? {},
    prefix ? [],
  }: let
    pkgs = pkgsFor system;
  in
    lib.evalModules {
      inherit prefix;
      class = "nixos";
      specialArgs =
        {
          modulesPath = toString nixpkgsPath + "/nixos/modules";
        }
        // specialArgs;
      modules =
        [
          ./nixos.nix
          {
            _module.args = {
              inherit pkgs;
              utils = {};
            };
          }
        ]
        ++ modules;
    };

  # microvm.nix's host module: its real options (the `config` of each VM is evaluated through
  # nix/eval/nixpkgs/nixos/lib/eval-config.nix), and a stand-in for the parts of
  # nixos-modules/host/default.nix that the project's modules extend: the `microvm` user and
  # the `microvm@` template with a drop-in per declared VM.
  microvmHost = {
    config,
    lib,
    pkgs,
    ...
  }: let
    stateDir = config.microvm.stateDir;
  in {
    imports = [(microvmSrc + "/nixos-modules/host/options.nix")];
    config = lib.mkIf config.microvm.host.enable {
      users.users.microvm = {
        isSystemUser = true;
        group = "kvm";
      };
      microvm.autostart = builtins.filter (n: config.microvm.vms.${n}.autostart) (builtins.attrNames config.microvm.vms);
      systemd.targets.microvms = {
        wantedBy = ["multi-user.target"];
        wants = map (n: "microvm@${n}.service") config.microvm.autostart;
      };
      systemd.services =
        {
          "microvm@" = {
            description = "MicroVM '%i'";
            after = ["network.target" "microvm-virtiofsd@%i.service"];
            requires = ["microvm-virtiofsd@%i.service"];
            restartIfChanged = false;
            serviceConfig = {
              Type = "simple";
              WorkingDirectory = "${stateDir}/%i";
              ExecStart = "${stateDir}/%i/current/bin/microvm-run";
              ExecStop = "${stateDir}/%i/booted/bin/microvm-shutdown";
              Restart = "always";
              RestartSec = "5s";
              User = "microvm";
              Group = "kvm";
              LimitMEMLOCK = "infinity";
            };
          };
          "microvm-virtiofsd@" = {
            description = "VirtioFS daemons for MicroVM '%i'";
            before = ["microvm@%i.service"];
            partOf = ["microvm@%i.service"];
            unitConfig.ConditionPathExists = "${stateDir}/%i/current/bin/virtiofsd-run";
            serviceConfig = {
              WorkingDirectory = "${stateDir}/%i";
              ExecStart = "${stateDir}/%i/current/bin/virtiofsd-run";
              Type = "notify";
            };
          };
        }
        // lib.listToAttrs (lib.concatMap (name: let
          vm = config.microvm.vms.${name};
          guest = vm.config.config;
          runner = guest.microvm.declaredRunner;
        in [
          (lib.nameValuePair "install-microvm-${name}" {
            description = "Install MicroVM '${name}'";
            before = ["microvm@${name}.service"];
            partOf = ["microvm@${name}.service"];
            wantedBy = ["microvms.target"];
            serviceConfig.Type = "oneshot";
            script = ''
              mkdir -p ${stateDir}/${name}
              cd ${stateDir}/${name}
              ln -sTf ${runner} current
              ln -sTf ${guest.system.build.toplevel} toplevel
              chown -h microvm:kvm . current
            '';
          })
          (lib.nameValuePair "microvm@${name}" {
            overrideStrategy = "asDropin";
            restartTriggers = [guest.system.build.toplevel];
          })
        ]) (builtins.attrNames config.microvm.vms));
    };
  };

  # A NixOS test (pkgs.testers.runNixOSTest's argument): its nodes, evaluated like the test
  # driver would (each node sees the others as `nodes`; primaryIPAddress by position).
  evalTest = test: let
    names = builtins.attrNames test.nodes;
    nodes = lib.listToAttrs (lib.imap1 (i: n:
      lib.nameValuePair n (evalNixos {
        modules = [
          test.nodes.${n}
          (test.defaults or {})
          {
            networking.hostName = lib.mkDefault n;
            networking.primaryIPAddress = "192.168.1.${toString i}";
            system.stateVersion = lib.mkDefault "25.11";
          }
        ];
        specialArgs = {nodes = lib.mapAttrs (_: c: c.config) nodes;};
      }))
    names);
  in {
    inherit nodes;
    testScript =
      if builtins.isFunction test.testScript
      then test.testScript {nodes = lib.mapAttrs (_: c: c.config) nodes;}
      else test.testScript;
  };

  # The flake's outputs with stand-in inputs: nixpkgs = the vendored lib plus the stand-in
  # package sets and nixosSystem; microvm = the host module above.
  flake = root: let
    f = import (root + "/flake.nix");
    nixpkgs = {
      lib =
        lib
        // {
          nixosSystem = args:
            evalNixos {
              modules = args.modules;
              system = args.system or "x86_64-linux";
              specialArgs = args.specialArgs or {};
            };
        };
      legacyPackages = lib.genAttrs ["x86_64-linux" "aarch64-linux"] pkgsFor;
    };
    microvm.nixosModules.host = microvmHost;
    outputs = f.outputs {
      self = outputs // {outPath = root;};
      inherit nixpkgs microvm;
    };
  in
    outputs;
in {
  inherit lib pkgsFor evalNixos evalTest microvmHost flake scopedImport;
}
