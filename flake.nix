{
  description = "OpenClaw agents in microVMs whose API credentials never enter the VM: credproxy, a credential-injecting egress proxy, and the NixOS modules around it";

  # No flake.lock is committed (it cannot be created without network where this repo is
  # developed); Nix writes one on first use. Pin with `nix flake lock` in your own checkout.
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    microvm = {
      url = "github:microvm-nix/microvm.nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = {
    self,
    nixpkgs,
    microvm,
  }: let
    inherit (nixpkgs) lib;
    systems = ["x86_64-linux" "aarch64-linux"];
    forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

    # The modules use `pkgs.credproxy` as their package default; these wrappers point it at
    # this flake's build without an overlay (NixOS tests forbid nixpkgs.overlays). The key
    # makes a wrapper count once when several outputs import it (openclaw-vm and
    # openclaw-containers both bring nixosModules.credproxy).
    withPackage = path: option: {
      key = "nix-openclaw-vm#${builtins.concatStringsSep "." option}";
      imports = [
        path
        ({
          lib,
          pkgs,
          ...
        }: {
          config = lib.setAttrByPath option (lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.credproxy);
        })
      ];
    };
  in {
    overlays.default = final: _prev: {
      credproxy = final.callPackage ./nix/package.nix {};
    };

    packages = forAllSystems (pkgs:
      {
        credproxy = pkgs.callPackage ./nix/package.nix {};
        default = self.packages.${pkgs.stdenv.hostPlatform.system}.credproxy;
      }
      // lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "x86_64-linux") {
        # The agent VM of the test-vm host, as a microvm.nix runner (`nix run .#test-vm`).
        # Run it on a host that has the test-vm services (credproxy, dev OpenBao): the agent
        # reaches the proxy over VSOCK. For a self-contained try-out see `test-host`.
        test-vm = self.nixosConfigurations.test-vm.config.microvm.vms.agent1.config.config.microvm.declaredRunner;
        # The whole test-vm host (credproxy, dev servers, and the nested agent VM) as a QEMU VM.
        test-host = self.nixosConfigurations.test-vm.config.system.build.vm;
      });

    nixosModules = {
      credproxy = withPackage ./modules/credproxy.nix ["services" "credproxy" "package"];
      credproxy-guest = withPackage ./modules/credproxy-guest.nix ["services" "credproxy-guest" "package"];
      credproxy-openbao = ./modules/credproxy-openbao.nix;
      openclaw-vm = {
        imports = [self.nixosModules.credproxy ./modules/openclaw-vm.nix];
      };
      openclaw-vm-guest = {
        imports = [self.nixosModules.credproxy-guest ./modules/openclaw-vm-guest.nix];
      };
      openclaw-containers = {
        imports = [self.nixosModules.credproxy ./modules/openclaw-containers.nix];
      };
      default = {
        imports = [self.nixosModules.openclaw-vm self.nixosModules.openclaw-containers self.nixosModules.credproxy-openbao];
      };
    };

    nixosConfigurations.test-vm = lib.nixosSystem {
      system = "x86_64-linux";
      modules = [
        microvm.nixosModules.host
        self.nixosModules.default
        ./nix/test-vm.nix
      ];
    };

    checks = forAllSystems (pkgs: let
      system = pkgs.stdenv.hostPlatform.system;
      tests = import ./nix/tests {
        inherit pkgs self;
      };
    in
      {
        credproxy = self.packages.${system}.credproxy;
        nftables-ruleset = tests.nftables-ruleset-string;
      }
      // lib.optionalAttrs (system == "x86_64-linux") {
        # Forces every assertion and the host's whole closure derivation (host and guest
        # modules, generated configs), without building it.
        eval-test-vm = pkgs.writeText "eval-test-vm" (builtins.unsafeDiscardStringContext self.nixosConfigurations.test-vm.config.system.build.toplevel.drvPath);
        eval-test-vm-guest = pkgs.writeText "eval-test-vm-guest" (builtins.unsafeDiscardStringContext self.nixosConfigurations.test-vm.config.microvm.vms.agent1.config.config.system.build.toplevel.drvPath);
        inherit (tests) credproxy-service credproxy-two-node nftables;
      });

    devShells = forAllSystems (pkgs: {
      default = pkgs.mkShell {
        inputsFrom = [self.packages.${pkgs.stdenv.hostPlatform.system}.credproxy];
        packages = with pkgs; [
          cargo
          rustc
          clippy
          rustfmt
          rust-analyzer
          protobuf
          temporal-cli
          openbao
          qemu
          oha
          curl
          jq
          alejandra
          nftables
        ];
        RUST_SRC_PATH = "${pkgs.rustPlatform.rustLibSrc}";
      };
    });

    formatter = forAllSystems (pkgs: pkgs.alejandra);
  };
}
