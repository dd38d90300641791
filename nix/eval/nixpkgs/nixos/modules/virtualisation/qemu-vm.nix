# Stand-in for nixpkgs' nixos/modules/virtualisation/qemu-vm.nix: the options test-vm sets,
# and `system.build.vm` (the QEMU runner of this host), which needs the host's top level.
{
  config,
  lib,
  pkgs,
  ...
}: {
  options.virtualisation = {
    memorySize = lib.mkOption {
      type = lib.types.ints.positive;
      default = 1024;
    };
    cores = lib.mkOption {
      type = lib.types.ints.positive;
      default = 1;
    };
    diskSize = lib.mkOption {
      type = lib.types.ints.positive;
      default = 1024;
    };
  };
  config.system.build.vm = pkgs.standIn.package "run-${config.networking.hostName}-vm" {
    toplevel = config.system.build.toplevel;
  };
}
