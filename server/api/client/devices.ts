// https://spec.matrix.org/latest/client-server-api/#device-management
import { createHash } from "node:crypto";
import { z } from "zod";
import { route } from "../../http/route.ts";

const auth = z.record(z.string(), z.unknown()).optional();

export const listDevices = route({
  method: "GET",
  path: "/_matrix/client/v3/devices",
  auth: "user",
  allowGuests: true,
  async handler({ requester }, services) {
    return { devices: await services.accounts.listDevices(requester.userId) };
  },
});

export const getDevice = route({
  method: "GET",
  path: "/_matrix/client/v3/devices/:deviceId",
  auth: "user",
  allowGuests: true,
  handler: ({ requester, params }, services) => services.accounts.getDevice(requester.userId, params.deviceId!),
});

export const updateDevice = route({
  method: "PUT",
  path: "/_matrix/client/v3/devices/:deviceId",
  auth: "user",
  allowGuests: true,
  body: z.object({ display_name: z.string().max(256).nullable().optional() }),
  async handler({ requester, params, body, c }, services) {
    // Application services create devices for their users here (spec v1.17): 201 when created.
    if (requester.appServiceId !== undefined && (await services.accounts.createDevice(requester.userId, params.deviceId!, body.display_name ?? null))) {
      return c.json({}, 201);
    }
    // Without display_name there is nothing to change, but the device must still exist (else 404).
    if (body.display_name === undefined) await services.accounts.getDevice(requester.userId, params.deviceId!);
    else await services.accounts.renameDevice(requester.userId, params.deviceId!, body.display_name);
    return {};
  },
});

export const deleteDevice = route({
  method: "DELETE",
  path: "/_matrix/client/v3/devices/:deviceId",
  auth: "user",
  body: z.object({ auth }),
  async handler({ requester, params, body, request }, services) {
    const deviceId = params.deviceId!;
    // The spec answers 404 for an unknown device; check before asking for a password.
    await services.accounts.getDevice(requester.userId, deviceId);
    // Application services delete their users' devices without UIA (spec v1.17, "Deleting devices").
    if (requester.appServiceId === undefined) {
      await services.uia.require(
        { operation: `delete_device:${deviceId}`, userId: requester.userId, flows: [["m.login.password"]] },
        body.auth,
        request,
      );
    }
    await services.accounts.deleteDevices(requester.userId, [deviceId], request);
    return {};
  },
});

export const deleteDevices = route({
  method: "POST",
  path: "/_matrix/client/v3/delete_devices",
  auth: "user",
  body: z.object({ devices: z.array(z.string()).max(1000), auth }),
  async handler({ requester, body, request }, services) {
    if (requester.appServiceId === undefined) {
      await services.uia.require(
        {
          // The session authorises deleting exactly this set of devices.
          operation: `delete_devices:${createHash("sha256").update([...body.devices].sort().join("\n")).digest("hex")}`,
          userId: requester.userId,
          flows: [["m.login.password"]],
        },
        body.auth,
        request,
      );
    }
    await services.accounts.deleteDevices(requester.userId, body.devices, request);
    return {};
  },
});

export const deviceRoutes = [listDevices, getDevice, updateDevice, deleteDevice, deleteDevices];
