// TensorRT IPluginV3 plugin `HollowAttention` (namespace "rlens", version "1").
//
// The contract (inputs, layouts, attributes) is defined once in src/rlens/plugins/spec.py;
// tests/test_plugin_spec.py checks the names and fields below against it.
//   inputs : q [B, Hq, S, D], k [B, Hkv, T, D], v [B, Hkv, T, D]  (fp32 or fp16, all the same,
//            linear), visual_span int64 [2] = (start, length) in chunk coordinates.
//   output : out [B, Hq, S, D], dtype of q.
// B must be 1: the node has no attention_mask input, so it cannot honour padding; configurePlugin
// and onShapeChange refuse a batch above 1 (the kernel itself handles any batch, unpadded).
// Only APIs present in both TensorRT 10.3 and 11.x are used; the library needs no libnvinfer
// at link time (creators are handed to TensorRT through getCreators(), see rlens_plugins.cpp).
#ifndef RLENS_HOLLOW_ATTENTION_PLUGIN_H
#define RLENS_HOLLOW_ATTENTION_PLUGIN_H

#include "NvInferRuntime.h"

#include <cstdint>
#include <vector>

namespace rlens
{
namespace trt
{

constexpr char kPLUGIN_NAME[] = "HollowAttention";
constexpr char kPLUGIN_VERSION[] = "1";
constexpr char kPLUGIN_NAMESPACE[] = "rlens";

struct HollowAttentionParams
{
    int32_t window{0};
    int32_t num_heads{0};
    int32_t num_kv_heads{0};
    int32_t head_dim{0};
    float scale{0.0F};
};

//! Logs through the logger TensorRT handed over with setLoggerFinder() (if any).
void logError(char const* message) noexcept;
void setLoggerFinderImpl(nvinfer1::ILoggerFinder* finder) noexcept;

class HollowAttentionPlugin : public nvinfer1::IPluginV3,
                              public nvinfer1::IPluginV3OneCore,
                              public nvinfer1::IPluginV3OneBuild,
                              public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit HollowAttentionPlugin(HollowAttentionParams const& params);
    HollowAttentionPlugin(HollowAttentionPlugin const&) = delete;
    HollowAttentionPlugin& operator=(HollowAttentionPlugin const&) = delete;
    ~HollowAttentionPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t setTactic(int32_t tactic) noexcept override;
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    bool checkDims(nvinfer1::Dims const* dims, int32_t nbInputs, int32_t nbOutputs) const noexcept;

    HollowAttentionParams mParams;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

class HollowAttentionPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    HollowAttentionPluginCreator();
    ~HollowAttentionPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace trt
} // namespace rlens

#endif // RLENS_HOLLOW_ATTENTION_PLUGIN_H
