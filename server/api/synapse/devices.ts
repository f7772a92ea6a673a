// A user's devices through Synapse's admin API (list, show, rename, delete one or several):
// https://element-hq.github.io/synapse/latest/admin_api/user_admin_api.html#list-all-devices
// Deleting a device here is the same as the user deleting it: its tokens die at once, its E2EE
// keys, to-device mailbox and pushers go (the accounts' devices-deleted hooks).
import { z } from "zod";
import { isLocalUser } from "../../accounts/user-id.ts";
import { invalidParam, notFound } from "../../http/errors.ts";
import { route } from "../../http/route.ts";
import type { Services } from "../../services.ts";
import { auditAdminAction, requireAdmin } from "./admin-auth.ts";

async function localUserId(services: Services, userId: string): Promise<string> {
  if (!isLocalUser(userId, services.config.server_name)) throw invalidParam("Can only look up local users");
  if (!(await services.accounts.getUser(userId))) throw notFound("User not found");
  return userId;
}

export const listDevices = route({
  method: "GET",
  path: "/_synapse/admin/v2/users/:userId/devices",
  auth: "user",
  async handler({ params, requester }, services) {
    await requireAdmin(requester, services);
    const devices = await services.accounts.adminDevices(await localUserId(services, params.userId!));
    return { devices, total: devices.length };
  },
});

export const getDevice = route({
  method: "GET",
  path: "/_synapse/admin/v2/users/:userId/devices/:deviceId",
  auth: "user",
  async handler({ params, requester }, services) {
    await requireAdmin(requester, services);
    const devices = await services.accounts.adminDevices(await localUserId(services, params.userId!));
    const device = devices.find((d) => d.device_id === params.deviceId);
    if (!device) throw notFound("No such device");
    return device;
  },
});

export const renameDevice = route({
  method: "PUT",
  path: "/_synapse/admin/v2/users/:userId/devices/:deviceId",
  auth: "user",
  body: z.object({ display_name: z.string().max(1000).nullable().optional() }),
  async handler({ params, body, requester, request }, services) {
    await requireAdmin(requester, services);
    const userId = await localUserId(services, params.userId!);
    if (body.display_name !== undefined) await services.accounts.renameDevice(userId, params.deviceId!, body.display_name);
    await auditAdminAction(services, requester, request, "rename_device", { user_id: userId, device_id: params.deviceId });
    return {};
  },
});

/** "Deletes the given device, and invalidates any access token associated with it." Unknown devices are no error (as Synapse). */
export const deleteDevice = route({
  method: "DELETE",
  path: "/_synapse/admin/v2/users/:userId/devices/:deviceId",
  auth: "user",
  async handler({ params, requester, request }, services) {
    await requireAdmin(requester, services);
    const userId = await localUserId(services, params.userId!);
    await services.accounts.deleteDevices(userId, [params.deviceId!], request, "deleted_by_admin");
    await auditAdminAction(services, requester, request, "delete_devices", { user_id: userId, device_ids: [params.deviceId] });
    return {};
  },
});

export const deleteDevices = route({
  method: "POST",
  path: "/_synapse/admin/v2/users/:userId/delete_devices",
  auth: "user",
  body: z.object({ devices: z.array(z.string().max(255)).max(10_000) }),
  async handler({ params, body, requester, request }, services) {
    await requireAdmin(requester, services);
    const userId = await localUserId(services, params.userId!);
    await services.accounts.deleteDevices(userId, body.devices, request, "deleted_by_admin");
    await auditAdminAction(services, requester, request, "delete_devices", { user_id: userId, device_ids: body.devices });
    return {};
  },
});

export const adminDeviceRoutes = [listDevices, getDevice, renameDevice, deleteDevice, deleteDevices];
