// Entry points of librlens_trt_plugins.so for TensorRT's dynamic plugin loading.
//
// IPluginRegistry::loadLibrary(), trtexec --dynamicPlugins / --staticPlugins, polygraphy
// --plugins and trt.get_plugin_registry().load_library() look these two C symbols up and
// register the returned creators under their own namespace ("rlens"). Unlike
// REGISTER_TENSORRT_PLUGIN (a static initializer calling getPluginRegistry()), this needs no
// libnvinfer symbol, so the library links against cudart only and loads in TensorRT 10.x and 11.x.
#include "hollow_attention/hollow_attention_plugin.h"

#include <cstdint>

extern "C" TENSORRTAPI nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static rlens::trt::HollowAttentionPluginCreator sHollowAttentionCreator;
    static nvinfer1::IPluginCreatorInterface* const kCreators[] = {&sHollowAttentionCreator};
    nbCreators = static_cast<int32_t>(sizeof(kCreators) / sizeof(kCreators[0]));
    return kCreators;
}

extern "C" TENSORRTAPI void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    rlens::trt::setLoggerFinderImpl(finder);
}
